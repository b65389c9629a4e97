//! Versions of a saga type: several definitions of one type side by side, and migrations
//! between them.
//!
//! Every instance records the version of the definition it started with
//! ([`SagaState::definition_version`]: `#[saga(version = "2")]`, or a hash of the graph). An
//! orchestrator runs one *current* version of each type — new sagas start on it — and may keep
//! earlier ones for the instances still in flight:
//!
//! - a **retired** version (`#[saga(name = "…", version = "1", retired)]`, listed in the current
//!   saga's `previous(..)`) finishes the instances that started on it, on its own graph;
//! - a [`Migration`] moves them onto a newer version at their next event — steps renamed, steps
//!   added that they skip, data upgraded by a function — with a
//!   [`Migrated`](HistoryEvent::Migrated) entry in their timeline. Its mapping is checked when
//!   it is registered, so no instance can land on a step the newer version lacks.
//!
//! [`Orchestrator::check_versions`](crate::orchestrator::Orchestrator::check_versions) lists
//! the instances in flight per type and version and names those nothing registered can run.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::definition::{Saga, SagaDefinition};
use crate::engine::{self, HistoryEvent, Outcome, SagaAction, SagaEvent, SagaInstance, SagaState};
use crate::graph::SagaGraph;
use crate::ids::{SagaId, Timestamp};
use crate::orchestrator::OrchestratorError;
use crate::ports::SagaRecord;

/// What a registered version of a saga type is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum VersionRole {
    /// New sagas start on it.
    Current,
    /// It only finishes the instances that started on it.
    Retired,
    /// Its instances move to version `0` (by a [`Migration`]) at their next event.
    MigratedTo(String),
}

impl fmt::Display for VersionRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Current => f.write_str("current"),
            Self::Retired => f.write_str("retired"),
            Self::MigratedTo(to) => write!(f, "migrated to {to}"),
        }
    }
}

impl std::str::FromStr for VersionRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "current" => Ok(Self::Current),
            "retired" => Ok(Self::Retired),
            other => match other.strip_prefix("migrated to ") {
                Some(to) => Ok(Self::MigratedTo(to.to_owned())),
                None => Err(format!(
                    "unknown version role `{other}` (expected current, retired or `migrated to …`)"
                )),
            },
        }
    }
}

/// A registered version of a saga type, as tools see it without its Rust types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisteredSaga {
    /// The saga type (definition name).
    pub saga_type: String,
    /// The definition version.
    pub version: String,
    /// What it is for.
    pub role: VersionRole,
    /// The state graph.
    pub graph: SagaGraph,
}

/// Why versions or a migration cannot be registered together.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VersionError {
    /// Two different definitions claim one version of a type.
    #[error(
        "`{first}` and `{second}` are both version `{version}` of saga `{saga_type}`; give each \
         definition its own `#[saga(version = \"…\")]`"
    )]
    DuplicateVersion {
        /// The saga type.
        saga_type: String,
        /// The version both claim.
        version: String,
        /// The Rust type registered first.
        first: &'static str,
        /// The one registered second.
        second: &'static str,
    },
    /// Two versions of a type are registered as current.
    #[error(
        "saga `{saga_type}` has two current versions, `{first}` and `{second}`; mark the older \
         one `retired` and list it in the newer one's `previous(..)`"
    )]
    TwoCurrent {
        /// The saga type.
        saga_type: String,
        /// The version registered first.
        first: String,
        /// The other.
        second: String,
    },
    /// A migration between two types.
    #[error("a migration from `{from}` to `{to}` crosses saga types; both must be versions of one")]
    OtherType {
        /// The source type.
        from: String,
        /// The target type.
        to: String,
    },
    /// A migration to a version that is not registered.
    #[error(
        "the migration of saga `{saga_type}` from `{from}` goes to version `{to}`, which is not \
         registered; register it before the migration"
    )]
    TargetNotRegistered {
        /// The saga type.
        saga_type: String,
        /// The source version.
        from: String,
        /// The missing target.
        to: String,
    },
    /// A version both registered and migrated away from, or migrated twice.
    #[error(
        "version `{version}` of saga `{saga_type}` is already {already}; an instance must have \
         one way to go on"
    )]
    Ambiguous {
        /// The saga type.
        saga_type: String,
        /// The version.
        version: String,
        /// `registered` or `migrated`.
        already: &'static str,
    },
    /// A migration names a step its version does not have.
    #[error(
        "the migration of saga `{saga_type}` names step `{step}`, which version `{version}` does not have"
    )]
    NoSuchStep {
        /// The saga type.
        saga_type: String,
        /// The version it looked in.
        version: String,
        /// The step.
        step: String,
    },
    /// An old step has no counterpart in the new version.
    #[error(
        "step `{step}` of saga `{saga_type}` version `{from}` has no step in version `{to}`; an \
         instance at or past it would be left on a step that does not exist — map it with \
         `rename_step(\"{step}\", \"…\")`"
    )]
    Unmapped {
        /// The saga type.
        saga_type: String,
        /// The source version.
        from: String,
        /// The target version.
        to: String,
        /// The step.
        step: String,
    },
    /// A step maps to one of another kind, or loses its compensation.
    #[error(
        "step `{step}` ({was}) of saga `{saga_type}` maps to `{target}` ({becomes}); a step keeps \
         its kind and its compensation across versions, or instances past it could not be \
         compensated as they started"
    )]
    ChangedStep {
        /// The saga type.
        saga_type: String,
        /// The old step.
        step: String,
        /// Its kind (and compensation).
        was: String,
        /// The new step.
        target: String,
        /// Its kind (and compensation).
        becomes: String,
    },
    /// Mapped steps are in another order.
    #[error(
        "steps `{first}` and `{second}` of saga `{saga_type}` are in the other order (or one \
         step) in the new version; compensations run in reverse order of the steps, so the \
         mapping must keep it"
    )]
    OrderChanged {
        /// The saga type.
        saga_type: String,
        /// The earlier old step.
        first: String,
        /// The later one.
        second: String,
    },
    /// A skipped step is also the target of an old step.
    #[error(
        "step `{step}` of saga `{saga_type}` is both skipped and the counterpart of an old step; \
         skip only steps the old version did not have"
    )]
    SkipOfMappedStep {
        /// The saga type.
        saga_type: String,
        /// The step.
        step: String,
    },
}

/// A version of a saga type, with its data type erased to JSON: what an orchestrator keeps
/// per registered version. Made by [`SagaVersion::of`]; the `saga!` macro lists a saga's
/// `previous(..)` versions as these.
#[derive(Clone)]
pub struct SagaVersion(pub(crate) Arc<dyn ErasedSaga>);

impl SagaVersion {
    /// The version `S` declares.
    pub fn of<S: Saga>() -> Self {
        Self(Arc::new(Typed::<S>(PhantomData)))
    }
}

impl fmt::Debug for SagaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaVersion")
            .field("saga_type", &self.0.saga_type())
            .field("version", &self.0.version())
            .field("rust_type", &self.0.rust_type())
            .finish()
    }
}

/// A transition in JSON form, independent of the saga's data type.
pub(crate) struct ErasedTransition {
    pub(crate) state: SagaState,
    pub(crate) data: serde_json::Value,
    pub(crate) actions: Vec<SagaAction>,
    pub(crate) history: Vec<HistoryEvent>,
}

pub(crate) enum ErasedOutcome {
    Applied(Box<ErasedTransition>),
    Ignored(String),
}

/// A registered version, with its data type erased to JSON.
pub(crate) trait ErasedSaga: Send + Sync {
    fn saga_type(&self) -> &str;
    fn version(&self) -> &str;
    /// The Rust type that declares it, for messages.
    fn rust_type(&self) -> &'static str;
    fn retired(&self) -> bool;
    fn graph(&self) -> SagaGraph;
    /// Whether `step` waits for its reply without a deadline by design (`no_timeout`).
    fn waits_without_deadline(&self, step: &str) -> bool;
    fn apply(
        &self,
        record: &SagaRecord,
        event: &SagaEvent,
        now: Timestamp,
    ) -> Result<ErasedOutcome, OrchestratorError>;
}

struct Typed<S>(PhantomData<fn() -> S>);

pub(crate) fn data_error(
    saga_id: SagaId,
    saga_type: &str,
    source: serde_json::Error,
) -> OrchestratorError {
    OrchestratorError::Data {
        saga_id,
        saga_type: saga_type.to_owned(),
        source,
    }
}

/// A transition with its data as JSON.
pub(crate) fn erase<S: Saga>(
    transition: engine::Transition<S::Data>,
) -> Result<ErasedTransition, OrchestratorError> {
    let state = transition.instance.state;
    let data = serde_json::to_value(&transition.instance.data)
        .map_err(|err| data_error(state.saga_id, &state.saga_type, err))?;
    Ok(ErasedTransition {
        state,
        data,
        actions: transition.actions,
        history: transition.history,
    })
}

fn step_shapes<D>(definition: &SagaDefinition<D>) -> Vec<(String, String)> {
    definition
        .steps()
        .iter()
        .map(|step| {
            let shape = match step.compensation() {
                Some(_) => format!("{}, compensated", step.kind()),
                None => step.kind().to_string(),
            };
            (step.name().to_owned(), shape)
        })
        .collect()
}

impl<S: Saga> ErasedSaga for Typed<S> {
    fn saga_type(&self) -> &str {
        S::definition().name()
    }

    fn version(&self) -> &str {
        S::definition().version()
    }

    fn rust_type(&self) -> &'static str {
        std::any::type_name::<S>()
    }

    fn retired(&self) -> bool {
        S::RETIRED
    }

    fn graph(&self) -> SagaGraph {
        S::definition().graph()
    }

    fn waits_without_deadline(&self, step: &str) -> bool {
        S::definition()
            .step(step)
            .is_some_and(|(_, step)| step.timeout().is_none())
    }

    fn apply(
        &self,
        record: &SagaRecord,
        event: &SagaEvent,
        now: Timestamp,
    ) -> Result<ErasedOutcome, OrchestratorError> {
        let state = &record.state;
        let data: S::Data = serde_json::from_value(record.data.clone())
            .map_err(|err| data_error(state.saga_id, &state.saga_type, err))?;
        let instance = SagaInstance {
            state: state.clone(),
            data,
        };
        match engine::transition(S::definition(), &instance, event, now)? {
            Outcome::Applied(t) => Ok(ErasedOutcome::Applied(Box::new(erase::<S>(*t)?))),
            Outcome::Ignored(why) => Ok(ErasedOutcome::Ignored(why.to_string())),
        }
    }
}

type Upgrade<From, To> = Box<dyn Fn(From) -> To + Send + Sync>;

/// Moves instances of version `From` of a saga type onto version `To`, at their next event.
///
/// Steps keep their names unless [renamed](Migration::rename_step); every step of `From`
/// must have a counterpart in `To` of the same kind, in the same order (the mapping is checked
/// by [`Orchestrator::migrate`](crate::orchestrator::Orchestrator::migrate)). Steps of `To`
/// with no counterpart run when an instance reaches them, unless
/// [skipped](Migration::skip_step). The data is decoded as `To`'s data type (so fields added
/// with `#[serde(default)]` or as `Option`s need nothing), or converted by
/// [`upgrade_data`](Migration::upgrade_data).
///
/// ```
/// # use saga_core::versions::Migration;
/// # saga_core::saga! {
/// #     #[saga(name = "Orders", version = "1", retired)]
/// #     saga OrdersV1(u32) { compensatable reserve { local: noop } pivot charge { local: noop } }
/// # }
/// # saga_core::saga! {
/// #     #[saga(version = "2", previous(OrdersV1))]
/// #     saga Orders(u64) {
/// #         compensatable hold_stock { local: noop } compensatable check_fraud { local: noop }
/// #         pivot charge { local: noop }
/// #     }
/// # }
/// # fn noop<D>(_: &mut D) -> Result<(), saga_core::StepFailure> { Ok(()) }
/// let migration = Migration::<OrdersV1, Orders>::new()
///     .rename_step("reserve", "hold_stock")
///     .skip_step("check_fraud")
///     .upgrade_data(u64::from);
/// # let _ = migration;
/// ```
pub struct Migration<From: Saga, To: Saga> {
    renames: Vec<(String, String)>,
    skips: Vec<String>,
    upgrade: Option<Upgrade<From::Data, To::Data>>,
}

impl<From: Saga, To: Saga> fmt::Debug for Migration<From, To> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("from", &From::definition().version())
            .field("to", &To::definition().version())
            .field("renames", &self.renames)
            .field("skips", &self.skips)
            .field("upgrades_data", &self.upgrade.is_some())
            .finish()
    }
}

impl<From: Saga, To: Saga> Default for Migration<From, To> {
    fn default() -> Self {
        Self::new()
    }
}

impl<From: Saga, To: Saga> Migration<From, To> {
    /// A migration that keeps every step's name and decodes the data as `To`'s.
    pub fn new() -> Self {
        Self {
            renames: Vec::new(),
            skips: Vec::new(),
            upgrade: None,
        }
    }

    /// Step `old` of `From` is step `new` of `To`.
    pub fn rename_step(mut self, old: impl Into<String>, new: impl Into<String>) -> Self {
        self.renames.push((old.into(), new.into()));
        self
    }

    /// Migrated instances do not run step `step` of `To` (one `From` did not have): it is
    /// recorded as skipped when they reach it.
    pub fn skip_step(mut self, step: impl Into<String>) -> Self {
        self.skips.push(step.into());
        self
    }

    /// Converts the data of migrated instances.
    pub fn upgrade_data(
        mut self,
        upgrade: impl Fn(From::Data) -> To::Data + Send + Sync + 'static,
    ) -> Self {
        self.upgrade = Some(Box::new(upgrade));
        self
    }

    /// Checks the mapping against both definitions and returns it, step by step.
    fn checked(self) -> Result<CheckedMigration<From, To>, VersionError> {
        let (from, to) = (From::definition(), To::definition());
        let saga_type = from.name().to_owned();
        if from.name() != to.name() {
            return Err(VersionError::OtherType {
                from: from.name().to_owned(),
                to: to.name().to_owned(),
            });
        }
        let no_such_step = |version: &str, step: &str| VersionError::NoSuchStep {
            saga_type: saga_type.clone(),
            version: version.to_owned(),
            step: step.to_owned(),
        };
        for (old, new) in &self.renames {
            if from.step(old).is_none() {
                return Err(no_such_step(from.version(), old));
            }
            if to.step(new).is_none() {
                return Err(no_such_step(to.version(), new));
            }
        }
        let (old_steps, new_steps) = (step_shapes(from), step_shapes(to));
        let mut steps = HashMap::new();
        let mut previous: Option<(usize, &str)> = None;
        for (old, shape) in &old_steps {
            let target = self
                .renames
                .iter()
                .rev()
                .find(|(renamed, _)| renamed == old)
                .map_or(old.as_str(), |(_, new)| new.as_str());
            let Some(index) = new_steps.iter().position(|(name, _)| name == target) else {
                return Err(VersionError::Unmapped {
                    saga_type,
                    from: from.version().to_owned(),
                    to: to.version().to_owned(),
                    step: old.clone(),
                });
            };
            if &new_steps[index].1 != shape {
                return Err(VersionError::ChangedStep {
                    saga_type,
                    step: old.clone(),
                    was: shape.clone(),
                    target: target.to_owned(),
                    becomes: new_steps[index].1.clone(),
                });
            }
            if let Some((before, earlier)) = previous
                && before >= index
            {
                return Err(VersionError::OrderChanged {
                    saga_type,
                    first: earlier.to_owned(),
                    second: old.clone(),
                });
            }
            previous = Some((index, old));
            steps.insert(old.clone(), target.to_owned());
        }
        for skip in &self.skips {
            if to.step(skip).is_none() {
                return Err(no_such_step(to.version(), skip));
            }
            if steps.values().any(|target| target == skip) {
                return Err(VersionError::SkipOfMappedStep {
                    saga_type,
                    step: skip.clone(),
                });
            }
        }
        Ok(CheckedMigration {
            steps,
            skips: self.skips,
            upgrade: self.upgrade,
        })
    }
}

struct CheckedMigration<From: Saga, To: Saga> {
    /// Old step name → new step name, for every old step.
    steps: HashMap<String, String>,
    skips: Vec<String>,
    upgrade: Option<Upgrade<From::Data, To::Data>>,
}

/// A checked migration with its data types erased to JSON.
pub(crate) trait ErasedMigration: Send + Sync {
    fn from(&self) -> &str;
    fn to(&self) -> &str;
    fn source_version(&self) -> SagaVersion;
    /// The record moved onto the target version, with the history entry saying so.
    fn migrate(&self, record: &SagaRecord)
    -> Result<(SagaRecord, HistoryEvent), OrchestratorError>;
}

impl<From: Saga, To: Saga> ErasedMigration for CheckedMigration<From, To> {
    fn from(&self) -> &str {
        From::definition().version()
    }

    fn to(&self) -> &str {
        To::definition().version()
    }

    fn source_version(&self) -> SagaVersion {
        SagaVersion::of::<From>()
    }

    fn migrate(
        &self,
        record: &SagaRecord,
    ) -> Result<(SagaRecord, HistoryEvent), OrchestratorError> {
        let old = &record.state;
        let data_error = |err| data_error(old.saga_id, &old.saga_type, err);
        let data = match &self.upgrade {
            Some(upgrade) => {
                let data: From::Data =
                    serde_json::from_value(record.data.clone()).map_err(data_error)?;
                serde_json::to_value(upgrade(data)).map_err(data_error)?
            }
            None => {
                let data: To::Data =
                    serde_json::from_value(record.data.clone()).map_err(data_error)?;
                serde_json::to_value(data).map_err(data_error)?
            }
        };
        let map = |step: &String| self.steps.get(step).cloned();
        let mut state = old.clone();
        state.definition_version = self.to().to_owned();
        state.current_step = old.current_step.as_ref().and_then(map);
        state.completed_steps = old.completed_steps.iter().filter_map(map).collect();
        state.skip_steps = old.skip_steps.iter().filter_map(map).collect();
        state.skip_steps.extend(self.skips.iter().cloned());
        let history = HistoryEvent::Migrated {
            from: self.from().to_owned(),
            to: self.to().to_owned(),
        };
        let migrated = SagaRecord {
            state,
            data,
            version: record.version,
            trace: record.trace.clone(),
        };
        Ok((migrated, history))
    }
}

/// The versions and migrations of one saga type.
#[derive(Default)]
struct SagaType {
    current: Option<String>,
    versions: BTreeMap<String, Arc<dyn ErasedSaga>>,
    migrations: BTreeMap<String, Arc<dyn ErasedMigration>>,
}

/// How an orchestrator handles the instances of one version of a registered type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// By a registered definition of that version.
    Registered(VersionRole),
    /// Nothing registered runs it.
    Unknown,
}

/// The saga types an orchestrator runs: per type, its versions and migrations.
#[derive(Default)]
pub(crate) struct Registry {
    types: HashMap<String, SagaType>,
    /// What registering found wrong, reported by `Orchestrator::check_versions`.
    problems: Vec<VersionError>,
}

impl Registry {
    /// Registers `saga` — as the type's current version unless it is retired — and the
    /// versions it lists as previous.
    pub(crate) fn register(&mut self, saga: SagaVersion, previous: Vec<SagaVersion>) {
        let current = !saga.0.retired();
        self.add(saga.0, current);
        for version in previous {
            self.add(version.0, false);
        }
    }

    fn add(&mut self, saga: Arc<dyn ErasedSaga>, current: bool) {
        let saga_type = saga.saga_type().to_owned();
        let version = saga.version().to_owned();
        let entry = self.types.entry(saga_type.clone()).or_default();
        if let Some(existing) = entry.versions.get(&version) {
            if existing.rust_type() != saga.rust_type() {
                self.problems.push(VersionError::DuplicateVersion {
                    saga_type: saga_type.clone(),
                    version: version.clone(),
                    first: existing.rust_type(),
                    second: saga.rust_type(),
                });
            }
        } else if entry.migrations.contains_key(&version) {
            self.problems.push(VersionError::Ambiguous {
                saga_type,
                version,
                already: "migrated",
            });
            return;
        } else {
            entry.versions.insert(version.clone(), saga);
        }
        if !current {
            return;
        }
        match &entry.current {
            Some(first) if *first != version => {
                let first = first.clone();
                self.problems.push(VersionError::TwoCurrent {
                    saga_type,
                    first,
                    second: version,
                });
            }
            _ => entry.current = Some(version),
        }
    }

    /// Adds a migration, checking it.
    pub(crate) fn migrate<From: Saga, To: Saga>(
        &mut self,
        migration: Migration<From, To>,
    ) -> Result<(), VersionError> {
        let checked = migration.checked()?;
        let saga_type = From::definition().name().to_owned();
        let (from, to) = (checked.from().to_owned(), checked.to().to_owned());
        let entry = self.types.entry(saga_type.clone()).or_default();
        if !entry.versions.contains_key(&to) {
            return Err(VersionError::TargetNotRegistered {
                saga_type,
                from,
                to,
            });
        }
        let already = match () {
            () if entry.versions.contains_key(&from) => Some("registered"),
            () if entry.migrations.contains_key(&from) => Some("migrated"),
            () => None,
        };
        if let Some(already) = already {
            return Err(VersionError::Ambiguous {
                saga_type,
                version: from,
                already,
            });
        }
        entry.migrations.insert(from, Arc::new(checked));
        Ok(())
    }

    pub(crate) fn problems(&self) -> &[VersionError] {
        &self.problems
    }

    pub(crate) fn has_type(&self, saga_type: &str) -> bool {
        self.types
            .get(saga_type)
            .is_some_and(|t| !t.versions.is_empty())
    }

    pub(crate) fn types(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    /// The current version of `saga_type`, if one is registered.
    pub(crate) fn current(&self, saga_type: &str) -> Option<&str> {
        self.types.get(saga_type)?.current.as_deref()
    }

    /// The registered definition of `version` of `saga_type`.
    pub(crate) fn version(&self, saga_type: &str, version: &str) -> Option<&Arc<dyn ErasedSaga>> {
        self.types.get(saga_type)?.versions.get(version)
    }

    /// How instances of `version` of `saga_type` are run.
    pub(crate) fn coverage(&self, saga_type: &str, version: &str) -> Coverage {
        let Some(entry) = self.types.get(saga_type) else {
            return Coverage::Unknown;
        };
        if entry.versions.contains_key(version) {
            return Coverage::Registered(match entry.current.as_deref() == Some(version) {
                true => VersionRole::Current,
                false => VersionRole::Retired,
            });
        }
        match entry.migrations.get(version) {
            Some(migration) => {
                Coverage::Registered(VersionRole::MigratedTo(migration.to().to_owned()))
            }
            None => Coverage::Unknown,
        }
    }

    /// Every registered version, migrations' sources included, by type and version.
    pub(crate) fn describe(&self) -> Vec<RegisteredSaga> {
        let mut all = Vec::new();
        for (saga_type, entry) in &self.types {
            let sources = entry.migrations.values().map(|m| m.source_version().0);
            for saga in entry.versions.values().cloned().chain(sources) {
                all.push(RegisteredSaga {
                    saga_type: saga_type.clone(),
                    version: saga.version().to_owned(),
                    role: match self.coverage(saga_type, saga.version()) {
                        Coverage::Registered(role) => role,
                        Coverage::Unknown => VersionRole::Retired,
                    },
                    graph: saga.graph(),
                });
            }
        }
        all.sort_by(|a, b| (&a.saga_type, &a.version).cmp(&(&b.saga_type, &b.version)));
        all
    }

    /// Applies `event` to `record` with the definition of its version, migrating it first
    /// when a migration covers its version.
    pub(crate) fn apply(
        &self,
        record: &SagaRecord,
        event: &SagaEvent,
        now: Timestamp,
    ) -> Result<ErasedOutcome, OrchestratorError> {
        let state = &record.state;
        let entry = self
            .types
            .get(&state.saga_type)
            .ok_or_else(|| OrchestratorError::UnregisteredType(state.saga_type.clone()))?;
        let mut migrated: Option<SagaRecord> = None;
        let mut history = Vec::new();
        loop {
            let current = migrated.as_ref().unwrap_or(record);
            let version = current.state.definition_version.as_str();
            if let Some(saga) = entry.versions.get(version) {
                let outcome = saga.apply(current, event, now)?;
                return Ok(match outcome {
                    ErasedOutcome::Applied(mut transition) if !history.is_empty() => {
                        history.append(&mut transition.history);
                        transition.history = history;
                        ErasedOutcome::Applied(transition)
                    }
                    other => other,
                });
            }
            // Each migration goes to a registered version or to one migrated further, and a
            // version is migrated at most once, so this ends.
            let Some(migration) = entry.migrations.get(version) else {
                return Err(self.unknown_version(&current.state));
            };
            let (next, entry_history) = migration.migrate(current)?;
            tracing::info!(
                saga_id = %state.saga_id,
                saga_type = %state.saga_type,
                from = migration.from(),
                to = migration.to(),
                "saga migrated to a newer version"
            );
            history.push(entry_history);
            migrated = Some(next);
        }
    }

    /// The registered definition of a record's version, or the current one's when nothing
    /// runs its version; for questions about steps.
    pub(crate) fn for_step(&self, saga_type: &str, version: &str) -> Option<&Arc<dyn ErasedSaga>> {
        let entry = self.types.get(saga_type)?;
        entry
            .versions
            .get(version)
            .or_else(|| entry.versions.get(entry.current.as_deref()?))
    }

    fn unknown_version(&self, state: &SagaState) -> OrchestratorError {
        OrchestratorError::UnknownVersion {
            saga_id: state.saga_id,
            saga_type: state.saga_type.clone(),
            version: state.definition_version.clone(),
            registered: self
                .types
                .get(&state.saga_type)
                .map(|entry| entry.versions.keys().cloned().collect())
                .unwrap_or_default(),
        }
    }
}

/// Instances in flight (not completed or compensated) of one version of a saga type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InFlightVersion {
    /// The saga type.
    pub saga_type: String,
    /// The definition version they started with (or were migrated to).
    pub version: String,
    /// How many are running or compensating.
    pub running: u64,
    /// How many are parked in `failed`.
    pub parked: u64,
}

/// What [`Orchestrator::check_versions`](crate::orchestrator::Orchestrator::check_versions)
/// found: each version with instances in flight, and how it is run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionReport {
    /// Per type and version of the orchestrator's types.
    pub versions: Vec<(InFlightVersion, Coverage)>,
}

impl VersionReport {
    /// The versions nothing registered can run.
    pub fn unknown(&self) -> Vec<&InFlightVersion> {
        self.versions
            .iter()
            .filter(|(_, coverage)| *coverage == Coverage::Unknown)
            .map(|(version, _)| version)
            .collect()
    }
}

/// Versions with instances in flight that nothing registered can run: why an orchestrator
/// refuses to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownVersions(pub Vec<InFlightVersion>);

impl fmt::Display for UnknownVersions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, v) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str("; ")?;
            }
            write!(
                f,
                "{} saga{} of type `{}` in flight ({} running, {} parked) started on definition \
                 version `{}`, which this build does not register",
                v.running + v.parked,
                if v.running + v.parked == 1 { "" } else { "s" },
                v.saga_type,
                v.running,
                v.parked,
                v.version,
            )?;
        }
        f.write_str(
            ". Keep that definition (`#[saga(name = \"…\", version = \"…\", retired)]`, listed in \
             the current saga's `previous(..)`), or register a `Migration` from it, or let them \
             wait parked in `failed` (`RuntimeOptions::unknown_versions = Park`) until a build \
             that runs them is deployed",
        )
    }
}

impl std::error::Error for UnknownVersions {}

/// What a runtime does at start-up with in-flight sagas whose version nothing registered
/// runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnknownVersionPolicy {
    /// Refuse to start, naming them ([`UnknownVersions`]).
    #[default]
    Refuse,
    /// Start, and park the running ones in `failed` with the reason; an operator `retry`
    /// moves them on once a build that runs their version is deployed.
    Park,
}
