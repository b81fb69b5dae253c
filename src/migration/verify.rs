//! `gcdr-data verify` (being written).
