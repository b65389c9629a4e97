//! `saga_definitions`: the saga types orchestrators run on this database — version, state
//! graph, and the reply channel their operator requests go to — recorded when a runtime
//! starts, so tools without the sagas' Rust types can draw graphs and address orchestrators.

use saga_core::Timestamp;
use saga_core::graph::SagaGraph;
use saga_core::ports::StoreError;
use saga_core::versions::VersionRole;
use sqlx::query;

use crate::db::backend::Conn;
use crate::error::{corrupt, store_error};
use crate::on_backend;
use crate::sql::{Bind, Get, to_i64, to_u64};

/// A saga definition as an orchestrator recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDefinition {
    /// The saga type.
    pub saga_type: String,
    /// The definition version.
    pub version: String,
    /// What the version is for.
    pub role: VersionRole,
    /// Where its orchestrator takes replies and operator requests.
    pub reply_channel: String,
    /// Its state graph.
    pub graph: SagaGraph,
    /// When an orchestrator last recorded it.
    pub registered_at: Timestamp,
}

/// Records `definition` (again: the newest registration wins).
pub(crate) async fn upsert(
    conn: Conn<'_>,
    definition: &StoredDefinition,
) -> Result<(), StoreError> {
    let graph = serde_json::to_value(&definition.graph).map_err(|e| corrupt("graph", e))?;
    on_backend!(conn, |c| {
        query(
            "INSERT INTO saga_definitions (saga_type, version, reply_channel, graph, registered_at, \
             role) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (saga_type, version) DO UPDATE SET reply_channel = excluded.reply_channel, \
             graph = excluded.graph, registered_at = excluded.registered_at, role = excluded.role",
        )
        .bind(definition.saga_type.as_str())
        .bind(definition.version.as_str())
        .bind(definition.reply_channel.as_str())
        .bind_json(&graph)
        .bind(to_i64(definition.registered_at.as_millis()))
        .bind(definition.role.to_string())
        .execute(c)
        .await
        .map(drop)
        .map_err(store_error)
    })
}

fn definition(row: &impl Get) -> Result<StoredDefinition, StoreError> {
    Ok(StoredDefinition {
        saga_type: row.text("saga_type")?,
        version: row.text("version")?,
        role: row
            .text("role")?
            .parse()
            .map_err(|e: String| corrupt("version role", e))?,
        reply_channel: row.text("reply_channel")?,
        graph: serde_json::from_value(row.json("graph")?).map_err(|e| corrupt("graph", e))?,
        registered_at: Timestamp(to_u64(row.int("registered_at")?)),
    })
}

/// Every recorded definition, by type and newest registration first (its current version
/// before the others it registered).
pub(crate) async fn list(conn: Conn<'_>) -> Result<Vec<StoredDefinition>, StoreError> {
    on_backend!(conn, |c| {
        query(
            "SELECT saga_type, version, role, reply_channel, graph, registered_at \
             FROM saga_definitions \
             ORDER BY saga_type, registered_at DESC, CASE role WHEN 'current' THEN 0 ELSE 1 END, \
             version",
        )
        .fetch_all(c)
        .await
        .map_err(store_error)?
        .iter()
        .map(definition)
        .collect()
    })
}

#[cfg(test)]
mod tests {
    use saga_core::graph::{GraphNode, Shape};

    use super::*;
    use crate::sql::testing::databases;

    fn stored(version: &str, at: u64) -> StoredDefinition {
        StoredDefinition {
            saga_type: "TripSaga".to_owned(),
            version: version.to_owned(),
            role: VersionRole::Current,
            reply_channel: "trip-replies".to_owned(),
            graph: SagaGraph {
                name: "TripSaga".to_owned(),
                nodes: vec![GraphNode {
                    id: "start".to_owned(),
                    title: "start".to_owned(),
                    detail: String::new(),
                    shape: Shape::Terminal,
                }],
                edges: Vec::new(),
            },
            registered_at: Timestamp(at),
        }
    }

    #[tokio::test]
    async fn a_definition_is_recorded_once_per_version_and_the_newest_comes_first() {
        for db in databases("definitions").await {
            let mut conn = db.database.acquire().await.expect("connects");
            upsert(conn.conn(), &stored("v1", 1))
                .await
                .expect("records");
            upsert(conn.conn(), &stored("v1", 5))
                .await
                .expect("records again");
            upsert(conn.conn(), &stored("v2", 3))
                .await
                .expect("records");
            let all = list(conn.conn()).await.expect("lists");
            let url = db.database.url().to_owned();
            assert_eq!(all, vec![stored("v1", 5), stored("v2", 3)], "{url}");
            drop(conn);
            db.drop().await;
        }
    }
}
