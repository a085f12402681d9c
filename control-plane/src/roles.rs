//! The role set: which workers each client gets and how each is configured. Built-in
//! defaults, overridable by a TOML file the operator edits (see `docs/operations.md`):
//!
//! ```toml
//! image = "kg-worker:latest"
//! [[role]]
//! name = "event-normalizer"
//! memory_limit_mb = 256
//! cpu_limit = 0.5
//! env = { WORKER_BATCH_MAX_RECORDS = "5000" }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kg_shared::pipeline_template::{PipelineTemplate, PipelineTemplates, TemplateError};
use kg_shared::role::names;
use kg_shared::{ClientId, Role};
use serde::{Deserialize, Serialize};

use crate::runtime::{SharedRoleParts, WorkerSpec};
use crate::supervise::RestartPolicy;

/// The templates a control plane runs when it is given no templates file: alert
/// enrichment (issue 14), a default pipeline, so every client gets it. The shipped file
/// `examples/pipelines/alert-enrichment.toml` is this text; an operator's own file replaces
/// it whole (an empty file runs no pipeline).
pub const BUILT_IN_PIPELINES: &str = include_str!("../../examples/pipelines/alert-enrichment.toml");

/// How errors name the built-in templates (they are tested, so there are none).
const BUILT_IN_PIPELINES_NAME: &str = "(built-in) examples/pipelines/alert-enrichment.toml";

/// The roles a client's workers may have: every [`Role`] but the shared event attributor,
/// which runs once for all clients (`ControllerSettings::event_attributor`), not per client.
pub const KNOWN_ROLES: &[Role] = &[
    Role::EventNormalizer,
    Role::LogNormalizer,
    Role::GraphBuilder,
];

/// The roles every client gets unless configured otherwise.
pub const DEFAULT_ROLES: &[Role] = &[
    Role::EventNormalizer,
    Role::LogNormalizer,
    Role::GraphBuilder,
];

/// The default worker image, used by the Docker runtime.
pub const DEFAULT_IMAGE: &str = "kg-worker:latest";

#[derive(Debug, thiserror::Error)]
pub enum RolesError {
    #[error("failed to read the roles file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse the roles file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("unknown role {0:?}; known roles: {known:?}", known = names(KNOWN_ROLES))]
    UnknownRole(String),
    #[error("role {0:?} is listed twice")]
    Duplicate(String),
    #[error("the role set is empty: every client would get no workers")]
    Empty,
}

/// How one role's workers are run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleTemplate {
    /// A [`KNOWN_ROLES`] name (checked when the set is built), kept as written so a roles
    /// file naming another is refused with [`RolesError::UnknownRole`].
    pub name: String,
    /// Extra arguments after `--role <name>`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub memory_limit_mb: Option<u64>,
    #[serde(default)]
    pub cpu_limit: Option<f64>,
    /// Swarm placement constraints (`node.labels.kg-workers==true`), after the control
    /// plane's own (`CP_SWARM_CONSTRAINTS`); the single-host runtimes ignore them.
    #[serde(default)]
    pub placement: Vec<String>,
    /// When an exited worker is started again: `no`, `always`, `on-failure[:max]`,
    /// `unless-stopped`. Enforced by the control plane; not part of the spec hash, so a
    /// change does not recreate running workers.
    #[serde(default = "default_restart")]
    pub restart: RestartPolicy,
}

fn default_restart() -> RestartPolicy {
    RestartPolicy::Always
}

impl RoleTemplate {
    fn builtin(name: &str) -> Self {
        Self {
            name: name.to_string(),
            args: Vec::new(),
            env: BTreeMap::new(),
            memory_limit_mb: Some(256),
            cpu_limit: Some(0.5),
            placement: Vec::new(),
            restart: default_restart(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolesFile {
    #[serde(default)]
    image: Option<String>,
    #[serde(default, rename = "role")]
    roles: Vec<RoleTemplate>,
}

/// The pseudo-client the shared workers run under (`kg-<role>-shared`); a registration
/// of this id is refused while shared workers are enabled.
pub const SHARED_CLIENT: &str = "shared";

/// The role of the shared event attributor.
pub const ATTRIBUTOR_ROLE: Role = Role::EventAttributor;

/// The configured roles and image.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleSet {
    pub image: String,
    pub roles: Vec<RoleTemplate>,
    /// The operator's pipelines (`CP_PIPELINES_FILE`); every client gets a worker of
    /// each one marked `default`.
    pub pipelines: Vec<PipelineTemplate>,
}

impl RoleSet {
    /// The built-in templates for `enabled` roles.
    pub fn builtin(enabled: &[String], image: &str) -> Result<Self, RolesError> {
        let roles = enabled
            .iter()
            .map(|name| RoleTemplate::builtin(name))
            .collect();
        Self::validated(image.to_string(), roles)
    }

    /// The roles file when given (it replaces the built-in set whole), else the built-in
    /// templates for `enabled`.
    pub fn load(file: Option<&Path>, enabled: &[String], image: &str) -> Result<Self, RolesError> {
        let Some(path) = file else {
            return Self::builtin(enabled, image);
        };
        let text = std::fs::read_to_string(path).map_err(|source| RolesError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let parsed: RolesFile = toml::from_str(&text).map_err(|source| RolesError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        Self::validated(
            parsed.image.unwrap_or_else(|| image.to_string()),
            parsed.roles,
        )
    }

    fn validated(image: String, roles: Vec<RoleTemplate>) -> Result<Self, RolesError> {
        if roles.is_empty() {
            return Err(RolesError::Empty);
        }
        let mut seen = std::collections::BTreeSet::new();
        for role in &roles {
            let known = role.name.parse::<Role>().ok();
            if !known.is_some_and(|known| KNOWN_ROLES.contains(&known)) {
                return Err(RolesError::UnknownRole(role.name.clone()));
            }
            if !seen.insert(role.name.clone()) {
                return Err(RolesError::Duplicate(role.name.clone()));
            }
        }
        Ok(Self {
            image,
            roles,
            pipelines: Vec::new(),
        })
    }

    /// The pipelines of the templates file at `file`; without one, the built-in
    /// templates ([`BUILT_IN_PIPELINES`]).
    pub fn with_pipelines(mut self, file: Option<&Path>) -> Result<Self, TemplateError> {
        self.pipelines = match file {
            Some(file) => PipelineTemplates::load(file)?.pipelines,
            None => {
                PipelineTemplates::parse(BUILT_IN_PIPELINES, Path::new(BUILT_IN_PIPELINES_NAME))?
                    .pipelines
            }
        };
        Ok(self)
    }

    /// What every client's worker of each role shares, built once: the role's name,
    /// image, arguments and environment (`base_env`, the Kafka settings, first, so a
    /// role's own env can override it); then one part per default pipeline.
    pub fn shared_parts(&self, base_env: &[(String, String)]) -> Vec<SharedRoleParts> {
        let mut parts = self.role_parts(base_env);
        parts.extend(self.pipeline_parts(base_env));
        parts
    }

    /// Each default pipeline's part.
    fn pipeline_parts(&self, base_env: &[(String, String)]) -> Vec<SharedRoleParts> {
        self.pipelines
            .iter()
            .filter(|pipeline| pipeline.default)
            .map(|pipeline| self.pipeline_part(pipeline, base_env))
            .collect()
    }

    /// The part of each pipeline a registration may ask for, by name.
    pub fn requestable_parts(
        &self,
        base_env: &[(String, String)],
    ) -> HashMap<String, SharedRoleParts> {
        self.pipelines
            .iter()
            .filter(|pipeline| pipeline.requestable && !pipeline.default)
            .map(|pipeline| {
                (
                    pipeline.name.clone(),
                    self.pipeline_part(pipeline, base_env),
                )
            })
            .collect()
    }

    /// A pipeline's part: `--role pipeline --pipeline <name>`, and its own text of the
    /// templates file in `WORKER_PIPELINES_TOML`, so the worker needs no file of the
    /// host's and a change to the pipeline changes its spec (and recreates it).
    fn pipeline_part(
        &self,
        pipeline: &PipelineTemplate,
        base_env: &[(String, String)],
    ) -> SharedRoleParts {
        let role = Role::Pipeline.as_str();
        let mut env: BTreeMap<String, String> = base_env.iter().cloned().collect();
        env.insert("WORKER_PIPELINES_TOML".into(), pipeline.source.clone());
        let args = ["--role", role, "--pipeline", pipeline.name.as_str()];
        SharedRoleParts {
            role: role.into(),
            instance: Some(pipeline.name.as_str().into()),
            image: self.image.as_str().into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Arc::new(env),
            memory_limit_mb: Some(256),
            cpu_limit: Some(0.5),
            placement: Arc::from([]),
        }
    }

    fn role_parts(&self, base_env: &[(String, String)]) -> Vec<SharedRoleParts> {
        let image: Arc<str> = self.image.as_str().into();
        self.roles
            .iter()
            .map(|role| {
                let mut env: BTreeMap<String, String> = base_env.iter().cloned().collect();
                env.extend(role.env.clone());
                let mut args = vec!["--role".to_string(), role.name.clone()];
                args.extend(role.args.iter().cloned());
                SharedRoleParts {
                    role: role.name.as_str().into(),
                    instance: None,
                    image: image.clone(),
                    args: args.into(),
                    env: Arc::new(env),
                    memory_limit_mb: role.memory_limit_mb,
                    cpu_limit: role.cpu_limit,
                    placement: role.placement.clone().into(),
                }
            })
            .collect()
    }

    /// The shared event attributor's part: the role's image, `--role event-attributor`
    /// and `base_env`; one worker for all clients, run under [`SHARED_CLIENT`].
    pub fn attributor_parts(&self, base_env: &[(String, String)]) -> SharedRoleParts {
        SharedRoleParts {
            role: ATTRIBUTOR_ROLE.as_str().into(),
            instance: None,
            image: self.image.as_str().into(),
            args: vec!["--role".to_string(), ATTRIBUTOR_ROLE.to_string()].into(),
            env: Arc::new(base_env.iter().cloned().collect()),
            memory_limit_mb: None,
            cpu_limit: None,
            placement: Arc::from([]),
        }
    }

    /// The specs of `client`'s workers, from [`Self::shared_parts`].
    pub fn render_with(client: &ClientId, parts: &[SharedRoleParts]) -> Vec<WorkerSpec> {
        parts
            .iter()
            .map(|part| WorkerSpec::new(client.clone(), part))
            .collect()
    }

    /// The specs of `client`'s workers.
    pub fn render(&self, client: &ClientId, base_env: &[(String, String)]) -> Vec<WorkerSpec> {
        Self::render_with(client, &self.shared_parts(base_env))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientId {
        ClientId::parse("af-9").unwrap()
    }

    #[test]
    fn default_role_set_gives_each_client_both_normalizers_and_a_graph_builder() {
        let enabled: Vec<String> = DEFAULT_ROLES.iter().map(|r| r.to_string()).collect();
        let specs = RoleSet::builtin(&enabled, DEFAULT_IMAGE)
            .unwrap()
            .render(&client(), &[]);
        let names: Vec<_> = specs.iter().map(|s| &*s.name).collect();
        assert_eq!(
            names,
            [
                "kg-event-normalizer-af-9",
                "kg-log-normalizer-af-9",
                "kg-graph-builder-af-9"
            ]
        );
        let env: BTreeMap<&str, &str> = specs[0].full_env().collect();
        assert_eq!(env["CLIENT_ID"], "af-9");
        assert_eq!(env["WORKER_ROLE"], "event-normalizer");
        assert_eq!(*specs[0].args, ["--role", "event-normalizer"]);
    }

    #[test]
    fn roles_file_overrides_env_and_limits_and_changes_the_spec_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roles.toml");
        std::fs::write(
            &path,
            "[[role]]\nname = \"event-normalizer\"\nmemory_limit_mb = 64\nenv = { WORKER_BATCH_MAX_RECORDS = \"10\" }\n",
        )
        .unwrap();
        let from_file = RoleSet::load(Some(&path), &[], DEFAULT_IMAGE).unwrap();
        let builtin = RoleSet::builtin(&["event-normalizer".into()], DEFAULT_IMAGE).unwrap();
        let a = &from_file.render(&client(), &[])[0];
        let b = &builtin.render(&client(), &[])[0];
        assert_eq!(a.memory_limit_mb, Some(64));
        assert_eq!(a.env["WORKER_BATCH_MAX_RECORDS"], "10");
        assert_ne!(a.spec_hash, b.spec_hash);
    }

    #[test]
    fn every_client_gets_a_worker_of_each_default_pipeline_carrying_its_own_template() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipelines.toml");
        let pipeline = |name: &str, default: bool| {
            format!(
                "[[pipeline]]\nname = \"{name}\"\ninput = [\"in-{name}\"]\noutput = \"out-{name}\"\ndefault = {default}\n\n[[pipeline.stage]]\nkind = \"enrich\"\nprocessor_id = \"p\"\n"
            )
        };
        std::fs::write(
            &path,
            format!(
                "{}{}",
                pipeline("alerts", true),
                pipeline("optional", false)
            ),
        )
        .unwrap();
        let enabled: Vec<String> = DEFAULT_ROLES.iter().map(|r| r.to_string()).collect();
        let roles = RoleSet::builtin(&enabled, DEFAULT_IMAGE)
            .unwrap()
            .with_pipelines(Some(&path))
            .unwrap();
        let specs = roles.render(&client(), &[]);
        let names: Vec<_> = specs.iter().map(|s| &*s.name).collect();
        assert_eq!(names[3..], ["kg-pipeline-alerts.af-9"]);
        let spec = &specs[3];
        assert_eq!(&*spec.role, "pipeline");
        assert_eq!(*spec.args, ["--role", "pipeline", "--pipeline", "alerts"]);
        assert_eq!(spec.env["WORKER_PIPELINES_TOML"], pipeline("alerts", true));
        // A change to the other pipeline leaves this one's spec as it was; a change to
        // this one recreates it.
        std::fs::write(
            &path,
            format!("{}{}", pipeline("alerts", true), pipeline("optional", true)),
        )
        .unwrap();
        let other_changed = roles.clone().with_pipelines(Some(&path)).unwrap();
        assert_eq!(
            other_changed.render(&client(), &[])[3].spec_hash,
            spec.spec_hash
        );
        std::fs::write(&path, pipeline("alerts", true).replace("\"p\"", "\"q\"")).unwrap();
        let changed = roles.clone().with_pipelines(Some(&path)).unwrap();
        assert_ne!(changed.render(&client(), &[])[3].spec_hash, spec.spec_hash);
        // A broken file is refused whole.
        std::fs::write(&path, "[[pipeline]]\nname = 1\n").unwrap();
        let error = roles.with_pipelines(Some(&path)).unwrap_err();
        assert_eq!((error.line, error.field.as_str()), (2, "pipeline[0].name"));
    }

    #[test]
    fn without_a_templates_file_every_client_gets_alert_enrichment_and_an_empty_file_turns_it_off()
    {
        let enabled: Vec<String> = DEFAULT_ROLES.iter().map(|r| r.to_string()).collect();
        let roles = RoleSet::builtin(&enabled, DEFAULT_IMAGE).unwrap();
        let built_in = roles.clone().with_pipelines(None).unwrap();
        let specs = built_in.render(&client(), &[]);
        let names: Vec<_> = specs.iter().map(|s| &*s.name).collect();
        assert_eq!(names[3..], ["kg-pipeline-alert-enrichment.af-9"]);
        // Its worker carries its template, from its [[pipeline]] header on.
        let template = &specs[3].env["WORKER_PIPELINES_TOML"];
        assert!(template.starts_with("[[pipeline]]\nname = \"alert-enrichment\""));
        assert!(BUILT_IN_PIPELINES.ends_with(template.as_str()));
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("none.toml");
        std::fs::write(&empty, "").unwrap();
        let none = roles.with_pipelines(Some(&empty)).unwrap();
        assert_eq!(none.render(&client(), &[]).len(), 3);
    }

    #[test]
    fn unknown_and_duplicate_roles_are_refused() {
        assert!(matches!(
            RoleSet::builtin(&["miner".into()], DEFAULT_IMAGE),
            Err(RolesError::UnknownRole(_))
        ));
        assert!(matches!(
            RoleSet::builtin(
                &["log-normalizer".into(), "log-normalizer".into()],
                DEFAULT_IMAGE
            ),
            Err(RolesError::Duplicate(_))
        ));
        assert!(matches!(
            RoleSet::builtin(&[], DEFAULT_IMAGE),
            Err(RolesError::Empty)
        ));
        // The shared attributor is a role, but no client's.
        assert!(matches!(
            RoleSet::builtin(&["event-attributor".into()], DEFAULT_IMAGE),
            Err(RolesError::UnknownRole(_))
        ));
        assert_eq!(
            RoleSet::builtin(&["miner".into()], DEFAULT_IMAGE)
                .unwrap_err()
                .to_string(),
            "unknown role \"miner\"; known roles: \
             [\"event-normalizer\", \"log-normalizer\", \"graph-builder\"]"
        );
    }

    #[test]
    fn role_env_overrides_the_kafka_settings() {
        let mut set = RoleSet::builtin(&["event-normalizer".into()], DEFAULT_IMAGE).unwrap();
        set.roles[0]
            .env
            .insert("KAFKA_BOOTSTRAP_SERVERS".into(), "other:9092".into());
        let spec = &set.render(
            &client(),
            &[("KAFKA_BOOTSTRAP_SERVERS".into(), "kafka:9092".into())],
        )[0];
        assert_eq!(spec.env["KAFKA_BOOTSTRAP_SERVERS"], "other:9092");
    }
}
