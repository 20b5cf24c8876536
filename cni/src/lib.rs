//! keelson-cni (being built).
