//! The storage conformance suite against the S3 backend on the test S3 server, one key prefix
//! per test.

mod s3_common;

dataplane::storage_conformance_tests!(s3, s3_common::fresh("conformance"));
