//! keelson-api-shim (being built).
