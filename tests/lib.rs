//! Cross-crate integration, conformance and snapshot tests for saga. The tests are the
//! `[[test]]` targets of this package; this library is empty.
