//! What every REST handler is given: the database and the services below
//! the API.

use crate::{
    authentication::Authenticator, configuration_database::Database,
    health_monitoring::HealthMonitor, operator_actions::OperatorActions,
};

#[derive(Clone)]
pub struct ApiState {
    pub db: Database,
    /// Sites' health, KPIs and metrics (the dashboard reads the same).
    pub health: HealthMonitor,
    /// Retry/Discard (the web UI calls the same).
    pub actions: OperatorActions,
    /// Password and token checks (bounded, throttled).
    pub auth: Authenticator,
    /// When set, `/metrics` wants `Authorization: Bearer <this>`.
    pub metrics_token: Option<String>,
}
