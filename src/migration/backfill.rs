//! `gcdr-data backfill` (being written).
