//! The injection payload contract: types, validation, JSON Schema, prompt catalogue.
