//! The fleet's Redis: one server, or a Redis Cluster when `stats.redis_url`
//! lists several nodes separated by commas. Either connects on first use, so
//! the receiver starts (and accepts messages) while Redis is down.
//!
//! In a cluster every key of the fleet sits in one hash slot: the prefix is
//! a hash tag (`{openim:stats:}cursors`, see [`super::FleetKeys`]), so the
//! counting script, which touches all of a batch's keys, stays one atomic step.

use crate::settings::StatsSettings;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use std::sync::Arc;

#[derive(Clone)]
pub enum FleetConnection {
    Single(ConnectionManager),
    Cluster(Arc<LazyCluster>),
}

pub struct LazyCluster {
    client: ClusterClient,
    connection: tokio::sync::Mutex<Option<ClusterConnection>>,
}

impl LazyCluster {
    async fn connection(&self) -> RedisResult<ClusterConnection> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = &*slot {
            return Ok(connection.clone());
        }
        // It follows the cluster's changes (MOVED, a failed node) once it has connected.
        let connection = self.client.get_async_connection().await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }
}

/// True when `url` names the nodes of a Redis Cluster.
pub fn is_cluster(url: &str) -> bool {
    url.contains(',')
}

impl FleetConnection {
    /// The connection `stats.redis_url` describes; nothing is connected yet.
    pub fn lazily(settings: &StatsSettings) -> Result<Self, String> {
        let url = settings.redis_url.expose();
        if !is_cluster(url) {
            let single = crate::sinks::redis_stream::connect_lazily(
                &settings.redis_url,
                settings.redis_timeout,
                "stats.redis_url",
            )?;
            return Ok(FleetConnection::Single(single));
        }
        let nodes: Vec<&str> = url.split(',').map(str::trim).filter(|node| !node.is_empty()).collect();
        let client = ClusterClient::builder(nodes)
            .connection_timeout(settings.redis_timeout)
            .response_timeout(settings.redis_timeout)
            .retries(1)
            .build()
            .map_err(|error| format!("stats.redis_url: {error}"))?;
        Ok(FleetConnection::Cluster(Arc::new(LazyCluster {
            client,
            connection: tokio::sync::Mutex::new(None),
        })))
    }
}

impl ConnectionLike for FleetConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            FleetConnection::Single(single) => single.req_packed_command(cmd),
            FleetConnection::Cluster(cluster) => Box::pin(async move {
                let mut connection = cluster.connection().await?;
                connection.req_packed_command(cmd).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            FleetConnection::Single(single) => single.req_packed_commands(pipeline, offset, count),
            FleetConnection::Cluster(cluster) => Box::pin(async move {
                let mut connection = cluster.connection().await?;
                connection.req_packed_commands(pipeline, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            FleetConnection::Single(single) => single.get_db(),
            FleetConnection::Cluster(_) => 0,
        }
    }
}
