//! berth's agent API server: mTLS, per-caller authorization, audit
