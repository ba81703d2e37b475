//! A local Genesys Cloud that speaks the real wire format, with scriptable faults.
