//! keelson-datapath (being built).
