//! Making palletized weights (the format, the kernels and loading are the runtime's,
//! [`tandem_model::pallet`]).
//!
//! * [`kmeans`]: the deterministic 1-D (weighted) k-means quantizer.
//! * [`plan`]: per-operation bit allocation to a target average, and palletizing a
//!   [`tandem_model::Model`] ([`Palletize`]).

pub mod kmeans;
pub mod plan;

pub use kmeans::quantize_matrix;
pub use plan::{OpCost, PalletPlan, Palletize, allocate_bits, sensitivities};
