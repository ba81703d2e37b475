//! Admission: the per-conversation capacity ledger (being built).
