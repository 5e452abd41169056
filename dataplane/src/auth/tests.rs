//! Tests of the access-control service.
