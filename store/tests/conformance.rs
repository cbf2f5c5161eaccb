//! The conformance suite on both backends: SQLite on a temporary file, and etcd both as one
//! real server and as a real 3-member cluster whose members the client uses alike (one server
//! or cluster per test, so that etcd's server-wide compaction cannot reach another test).

corral_store::conformance_tests!(sqlite, corral_store::testing::sqlite_harness);
corral_store::conformance_tests!(etcd, corral_store::testing::etcd_harness);
corral_store::conformance_tests!(etcd_cluster, corral_store::testing::etcd_cluster_harness);
