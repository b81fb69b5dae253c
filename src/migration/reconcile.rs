//! `gcdr-data reconcile` (being written).
