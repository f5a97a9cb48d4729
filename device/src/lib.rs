//! Tandem device side.
