//! The conformance suite on both backends: SQLite on a temporary file, etcd on a real server
//! (one per test, so that etcd's server-wide compaction cannot reach another test).

corral_store::conformance_tests!(sqlite, corral_store::testing::sqlite_harness);
corral_store::conformance_tests!(etcd, corral_store::testing::etcd_harness);
