//! Cluster Infrastructure: with SQLite one node per database file.

use sitelink_central::{Central, CentralConfig};

fn config(dir: &std::path::Path) -> CentralConfig {
    CentralConfig::parse(
        "[central]\ndatabase_url = \"sqlite://central.db\"\nlink_bind = \"127.0.0.1:0\"\nhttp_bind = \"127.0.0.1:0\"\n",
        dir,
    )
    .unwrap()
}

#[tokio::test]
async fn a_second_node_on_the_same_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = Central::build(config(dir.path())).await.unwrap();
    let second = Central::build(config(dir.path()))
        .await
        .err()
        .expect("refused");
    let message = format!("{second:#}");
    assert!(
        message.contains("another central node is running on the SQLite database")
            && message.contains("PostgreSQL"),
        "{message}"
    );
    // The lock goes with the first node; then a node may start.
    drop(first);
    Central::build(config(dir.path())).await.unwrap();
}
