//! (being written: see issue 7)
