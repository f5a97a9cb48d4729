//! Making palletized weights (the format, the kernels and loading are the runtime's,
//! [`tandem_model::pallet`]).
//!
//! * [`kmeans`]: the deterministic 1-D (weighted) k-means quantizer.
//! * [`gptq`]: one matrix against its calibration inputs (activation-weighted tables, GPTQ
//!   error feedback, table refit).
//! * [`calib`]: a whole model against calibration text, layer by layer.
//! * [`plan`]: per-operation bit allocation to a target average, and palletizing a
//!   [`tandem_model::Model`] ([`Palletize`]).

pub mod calib;
pub mod gptq;
pub mod kmeans;
pub mod plan;

pub use calib::{CalibOptions, OpFit, palletize_calibrated, plan_except};
pub use gptq::{GptqOptions, gptq_palletize};
pub use kmeans::quantize_matrix;
pub use plan::{OpCost, PalletPlan, Palletize, allocate_bits, sensitivities};
