//! HAProxy's PROXY protocol (placeholder, filled in by the next commit).
