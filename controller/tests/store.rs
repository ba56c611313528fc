//! What every `Store` implementation must do, checked through the trait
//! object only (`contract` takes any `dyn Store`): the SQLite store, and the
//! PostgreSQL store on a throwaway cluster (`tests/src/pg.rs`).

#[path = "../../tests/src/pg.rs"]
mod pg;

use std::collections::BTreeMap;
use std::sync::Arc;

use graydar_common::api::{
    Capabilities, Finding, FindingKind, FindingState, FindingTransition, RegisterRequest, Severity, Timestamp,
    TransitionKind, finding_id,
};
use graydar_common::fault_api::FaultStatusUpdate;
use graydar_common::faults::{FaultSpec, FaultState};
use graydar_controller::store::DatabaseUrl;
use graydar_controller::store::{
    AgentRecord, CredentialRecord, EndReason, FaultAgentRecord, FaultRecord, FaultSelection, FaultStatus,
    FindingFilter, LeverRecord, PgStore, SqliteStore, Store, StoreError, TimedTransition,
};
use sqlx::Connection as _;

fn agent(host: &str, seen_ms: i64) -> AgentRecord {
    AgentRecord {
        req: RegisterRequest {
            hostname: host.to_owned(),
            addresses: vec!["10.0.0.1".into()],
            labels: BTreeMap::from([("rack".to_owned(), "r1".to_owned())]),
            kernel_version: "6.18.0".into(),
            agent_version: "0.1.0".into(),
            capabilities: Capabilities::default(),
            interfaces: None,
            dm_devices: None,
            credential_sha256: None,
        },
        registered_ms: 1_000,
        last_seen_ms: seen_ms,
    }
}

fn transition(host: &str, subject: &str, kind: TransitionKind, at_ms: i64, at: &str) -> TimedTransition {
    let state = if kind == TransitionKind::Resolved {
        FindingState::Resolved
    } else {
        FindingState::Firing
    };
    let at: Timestamp = at.parse().expect("an RFC 3339 time");
    TimedTransition {
        at_ms,
        transition: FindingTransition {
            transition: kind,
            at,
            finding: Finding {
                id: finding_id(host, FindingKind::KernelDrops, subject),
                host: host.to_owned(),
                kind: FindingKind::KernelDrops,
                subject: subject.to_owned(),
                severity: Severity::Warning,
                state,
                since: "2026-01-01T00:00:00Z".parse().expect("an RFC 3339 time"),
                last_seen: at,
                resolved_at: (state == FindingState::Resolved).then_some(at),
                summary: format!("{subject}: drops"),
                evidence: BTreeMap::new(),
                runbook: FindingKind::KernelDrops.runbook(),
            },
        },
    }
}

fn fault(id: &str, created_ms: i64, dry_run: bool, agents: &[&str]) -> FaultRecord {
    let spec: FaultSpec =
        serde_json::from_value(serde_json::json!({"kind": "netem", "interface": "eth0", "netem": {"delay_ms": 100}}))
            .expect("spec");
    FaultRecord {
        id: id.to_owned(),
        spec,
        selector: BTreeMap::new(),
        dry_run,
        forced: false,
        duration_seconds: 60,
        lease_ms: (!dry_run).then_some(5_000),
        created_ms,
        expires_ms: created_ms + 60_000,
        ended_ms: None,
        end_reason: None,
        agents: agents
            .iter()
            .map(|a| {
                (
                    (*a).to_owned(),
                    FaultAgentRecord {
                        state: FaultState::Pending,
                        reason: None,
                        operations: vec![],
                        updated_ms: created_ms,
                        agent_at_ms: None,
                    },
                )
            })
            .collect(),
    }
}

fn ids(faults: &[FaultRecord]) -> Vec<&str> {
    faults.iter().map(|f| f.id.as_str()).collect()
}

/// Ids of a selection without an order.
fn sorted_ids(faults: &[FaultRecord]) -> Vec<&str> {
    let mut v = ids(faults);
    v.sort_unstable();
    v
}

/// The contract, through `dyn Store` only.
async fn contract(store: Arc<dyn Store>) {
    store.ping().await.expect("ping");

    // Agents: upsert keeps registered_ms, last-seen only moves forward.
    store.upsert_agent(&agent("n1", 2_000)).await.expect("insert");
    let mut again = agent("n1", 3_000);
    again.registered_ms = 9_999;
    again.req.kernel_version = "6.19.0".into();
    store.upsert_agent(&again).await.expect("update");
    store
        .update_last_seen(&[("n1".to_owned(), 5_000), ("nobody".to_owned(), 5_000)])
        .await
        .expect("last seen");
    store
        .update_last_seen(&[("n1".to_owned(), 4_000)])
        .await
        .expect("older last seen");
    let agents = store.load_agents().await.expect("load");
    assert_eq!(agents.len(), 1);
    assert_eq!(
        (agents[0].registered_ms, agents[0].last_seen_ms),
        (1_000, 5_000),
        "registered_ms kept, last_seen only forward"
    );
    assert_eq!(agents[0].req.kernel_version, "6.19.0");
    assert_eq!(agents[0].req.labels["rack"], "r1");
    // One agent, and every last-seen time, as another controller rereads them.
    let one = store.agent("n1").await.expect("agent").expect("n1 is stored");
    assert_eq!((one.registered_ms, one.last_seen_ms), (1_000, 5_000));
    assert!(store.agent("nobody").await.expect("agent").is_none());
    assert_eq!(
        store.last_seen_all().await.expect("last seen"),
        vec![("n1".to_owned(), 5_000)]
    );
    // Credentials: bound once, read back one by one, forgotten.
    let cred = CredentialRecord {
        hostname: "n1".into(),
        sha256: [7; 32],
        created_ms: 1_500,
    };
    assert_eq!(store.bind_credential(&cred).await.expect("bind"), [7; 32]);
    let other = CredentialRecord {
        sha256: [8; 32],
        ..cred.clone()
    };
    assert_eq!(
        store.bind_credential(&other).await.expect("bind again"),
        [7; 32],
        "the first binding stays"
    );
    let got = store
        .credential("n1")
        .await
        .expect("credential")
        .expect("n1's credential");
    assert_eq!((got.sha256, got.created_ms), ([7; 32], 1_500));
    assert!(store.credential("nobody").await.expect("credential").is_none());
    assert!(store.delete_credential("n1").await.expect("delete"));
    assert!(store.credential("n1").await.expect("credential").is_none());

    // Findings: duplicates change nothing, the newest transition wins.
    const T0: &str = "2026-01-01T00:00:00Z";
    const T1: &str = "2026-01-01T00:00:01Z";
    let batch = vec![
        transition("n1", "eth0", TransitionKind::Fired, 1_767_225_600_000, T0),
        transition("n1", "eth1", TransitionKind::Fired, 1_767_225_600_000, T0),
    ];
    let r = store.ingest("n1".to_owned(), batch.clone()).await.expect("ingest");
    assert_eq!((r.accepted, r.duplicates), (2, 0));
    let r = store.ingest("n1".to_owned(), batch).await.expect("again");
    assert_eq!((r.accepted, r.duplicates), (0, 2));
    let r = store
        .ingest(
            "n1".to_owned(),
            vec![transition(
                "n1",
                "eth0",
                TransitionKind::Resolved,
                1_767_225_601_000,
                T1,
            )],
        )
        .await
        .expect("resolve");
    assert_eq!((r.accepted, r.duplicates), (1, 0));
    assert_eq!(store.transition_count().await.expect("count"), 3);
    assert_eq!(store.firing_counts(None).await.expect("firing")["n1"], 1);
    assert_eq!(store.firing_counts(Some("n2")).await.expect("firing").len(), 0);
    let all = store
        .findings(&FindingFilter {
            limit: 10,
            ..FindingFilter::default()
        })
        .await
        .expect("findings");
    assert_eq!(
        all.iter().map(|f| (f.subject.as_str(), f.state)).collect::<Vec<_>>(),
        [("eth1", FindingState::Firing), ("eth0", FindingState::Resolved)],
        "firing first"
    );
    let resolved = store
        .findings(&FindingFilter {
            state: Some(FindingState::Resolved),
            since_ms: Some(1_767_225_601_000),
            limit: 10,
            ..FindingFilter::default()
        })
        .await
        .expect("filtered");
    assert_eq!(resolved.len(), 1);
    let id = finding_id("n1", FindingKind::KernelDrops, "eth0");
    let d = store.finding(&id).await.expect("finding").expect("exists");
    assert_eq!(d.finding.state, FindingState::Resolved);
    assert_eq!(
        d.history.iter().map(|h| h.transition).collect::<Vec<_>>(),
        [TransitionKind::Fired, TransitionKind::Resolved]
    );
    assert!(store.finding("0000000000000000").await.expect("none").is_none());

    // Faults: selections, ends, states, the epoch.
    store
        .insert_fault(&fault("flt-a", 10_000, false, &["n1"]))
        .await
        .expect("a");
    store
        .insert_fault(&fault("flt-b", 20_000, true, &["n1"]))
        .await
        .expect("b");
    store
        .insert_fault(&fault("flt-c", 30_000, false, &["n1"]))
        .await
        .expect("c");
    let newest = |status| store.load_faults(FaultSelection::Newest { status, limit: 10 });
    assert_eq!(ids(&newest(None).await.expect("all")), ["flt-c", "flt-b", "flt-a"]);
    // A fault's own lease is kept; none stays none.
    let all = newest(None).await.expect("all");
    assert_eq!(
        all.iter().map(|f| f.lease_ms).collect::<Vec<_>>(),
        [Some(5_000), None, Some(5_000)]
    );
    assert_eq!(ids(&newest(Some(FaultStatus::DryRun)).await.expect("dry")), ["flt-b"]);
    store
        .end_faults(&["flt-a".to_owned()], 15_000, EndReason::Deleted)
        .await
        .expect("end");
    store
        .end_faults(&["flt-a".to_owned()], 16_000, EndReason::RevertAll)
        .await
        .expect("end again");
    let a = store.load_faults(FaultSelection::Id("flt-a")).await.expect("a");
    assert_eq!(
        (a[0].ended_ms, a[0].end_reason),
        (Some(15_000), Some(EndReason::Deleted)),
        "the first end stays"
    );
    assert_eq!(ids(&newest(Some(FaultStatus::Ended)).await.expect("ended")), ["flt-a"]);
    assert_eq!(
        ids(&newest(Some(FaultStatus::Running)).await.expect("running")),
        ["flt-c"]
    );
    // Live: not ended, or ended less than a lease ago.
    let live = |now_ms| {
        store.load_faults(FaultSelection::Live {
            now_ms,
            lease_ms: 1_000,
        })
    };
    assert_eq!(
        sorted_ids(&live(15_500).await.expect("live")),
        ["flt-a", "flt-b", "flt-c"]
    );
    assert_eq!(sorted_ids(&live(16_000).await.expect("live")), ["flt-b", "flt-c"]);
    let c = store.load_faults(FaultSelection::Id("flt-c")).await.expect("c");
    assert_eq!(c[0].agents["n1"].agent_at_ms, None, "not reported yet");
    let stored = store
        .update_fault_states(
            "n1",
            &[
                FaultStatusUpdate {
                    id: "flt-c".into(),
                    state: FaultState::Active,
                    reason: None,
                    operations: vec!["tc qdisc add".into()],
                    at: Some(Timestamp::from_unix_ms(29_500)),
                },
                FaultStatusUpdate {
                    id: "flt-zzz".into(),
                    state: FaultState::Active,
                    reason: None,
                    operations: vec![],
                    at: None,
                },
            ],
            31_000,
        )
        .await
        .expect("states");
    assert_eq!(stored, 1, "only rows that exist");
    let c = store.load_faults(FaultSelection::Id("flt-c")).await.expect("c");
    let n1 = &c[0].agents["n1"];
    assert_eq!(
        (n1.state, n1.operations.clone(), n1.updated_ms, n1.agent_at_ms),
        (
            FaultState::Active,
            vec!["tc qdisc add".to_owned()],
            31_000,
            Some(29_500)
        ),
        "the controller's time of the report, and the agent's time of the change"
    );
    // A later report without a time clears it (the new state's time is unknown).
    let stored = store
        .update_fault_states(
            "n1",
            &[FaultStatusUpdate {
                id: "flt-c".into(),
                state: FaultState::Reverted,
                reason: None,
                operations: vec![],
                at: None,
            }],
            32_000,
        )
        .await
        .expect("states");
    assert_eq!(stored, 1);
    let c = store.load_faults(FaultSelection::Id("flt-c")).await.expect("c");
    assert_eq!(
        (c[0].agents["n1"].state, c[0].agents["n1"].agent_at_ms),
        (FaultState::Reverted, None)
    );
    store
        .update_fault_states(
            "n1",
            &[FaultStatusUpdate {
                id: "flt-c".into(),
                state: FaultState::Reverted,
                reason: None,
                operations: vec![],
                at: Some(Timestamp::from_unix_ms(31_900)),
            }],
            32_100,
        )
        .await
        .expect("states");
    assert_eq!(store.count_ended_faults(0).await.expect("ended"), (1, 0));
    assert_eq!(store.count_ended_faults(90_000).await.expect("expired too"), (3, 0));
    assert_eq!(store.revert_all_epoch().await.expect("epoch"), 0);
    store.revert_all(7, &[], 40_000).await.expect("revert-all, no fault");
    store
        .revert_all(8, &["flt-c".to_owned(), "flt-a".to_owned()], 41_000)
        .await
        .expect("revert-all");
    assert_eq!(store.revert_all_epoch().await.expect("epoch"), 8);
    let ended = |id: &'static str| {
        let store = &store;
        async move {
            let f = store.load_faults(FaultSelection::Id(id)).await.expect("load");
            (f[0].ended_ms, f[0].end_reason)
        }
    };
    assert_eq!(ended("flt-c").await, (Some(41_000), Some(EndReason::RevertAll)));
    assert_eq!(
        ended("flt-a").await,
        (Some(15_000), Some(EndReason::Deleted)),
        "an ended fault keeps its end"
    );

    // The safety lever: none, engaged, engaged again (replaced), released,
    // engaged (kept for the reopen below).
    assert_eq!(store.safety_lever().await.expect("lever"), None);
    let first = LeverRecord {
        engaged_ms: 50_000,
        reason: "first".into(),
    };
    store.set_safety_lever(Some(&first)).await.expect("engage");
    assert_eq!(store.safety_lever().await.expect("lever"), Some(first));
    let second = LeverRecord {
        engaged_ms: 51_000,
        reason: "second".into(),
    };
    store.set_safety_lever(Some(&second)).await.expect("engage again");
    assert_eq!(store.safety_lever().await.expect("lever"), Some(second.clone()));
    store.set_safety_lever(None).await.expect("release");
    assert_eq!(store.safety_lever().await.expect("lever"), None);
    store.set_safety_lever(None).await.expect("release twice");
    store.set_safety_lever(Some(&second)).await.expect("engage");

    // Console logouts: recorded until the session would have expired, then
    // forgotten by a later logout; recording one twice is no error.
    assert!(!store.logged_out("s-1").await.expect("read"));
    store.record_logout("s-1", 5_000, 1_000).await.expect("logout");
    store.record_logout("s-1", 5_000, 1_000).await.expect("logout twice");
    store.record_logout("s-2", 90_000, 1_000).await.expect("logout");
    assert!(store.logged_out("s-1").await.expect("read"));
    assert!(!store.logged_out("s-3").await.expect("read"));
    store.record_logout("s-3", 90_000, 6_000).await.expect("logout");
    assert!(
        !store.logged_out("s-1").await.expect("read"),
        "expired at 5 000, forgotten at 6 000"
    );
    assert!(store.logged_out("s-2").await.expect("read") && store.logged_out("s-3").await.expect("read"));
}

#[tokio::test]
async fn sqlite_store_keeps_the_contract_and_its_data_across_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).await.expect("open"));
    contract(store.clone()).await;
    store.close().await;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).await.expect("reopen"));
    after_reopen(store).await;
}

#[tokio::test]
async fn postgres_store_keeps_the_contract_and_its_data_across_reopen() {
    let cluster = pg::PgCluster::start();
    let url = DatabaseUrl::parse(&cluster.default_url()).expect("a postgres:// URL");
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(&url).await.expect("connect"));
    contract(store.clone()).await;
    store.close().await;
    // Connecting again runs the migrations again: none is left to apply.
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(&url).await.expect("reconnect"));
    after_reopen(store).await;
}

/// A migration that fails stops the connect with its reason, and leaves
/// nothing of itself (PostgreSQL runs each migration in a transaction).
#[tokio::test]
async fn a_failing_postgres_migration_stops_the_start_with_its_reason() {
    let cluster = pg::PgCluster::start();
    let url = DatabaseUrl::parse(&cluster.default_url()).expect("a postgres:// URL");
    let mut c = sqlx::PgConnection::connect(url.expose()).await.expect("connect");
    // Migration 1 creates `agents`, then `findings`: make it fail half way.
    sqlx::raw_sql("CREATE TABLE findings (id TEXT)")
        .execute(&mut c)
        .await
        .expect("create a conflicting table");
    let e = match PgStore::connect(&url).await {
        Ok(_) => panic!("migrations ran over a conflicting table"),
        Err(e) => e,
    };
    assert!(matches!(e, StoreError::Migrate(_)), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("findings") && text.contains("already exists"), "{text}");
    let agents: Option<String> = sqlx::query_scalar("SELECT to_regclass('agents')::text")
        .fetch_one(&mut c)
        .await
        .expect("query");
    assert_eq!(agents, None, "the failed migration left its first table behind");
}

/// What the contract left, read by a store opened again on the same database.
/// What the stores write in multi-row statements of 1000 rows: a flush of
/// 2500 agents' last-seen times, and 2500 transitions (two per finding) in
/// one batch, all of them stored.
async fn many_at_once(store: Arc<dyn Store>) {
    let hosts: Vec<String> = (0..2500).map(|i| format!("bulk-{i:04}")).collect();
    for h in &hosts {
        store.upsert_agent(&agent(h, 1_000)).await.expect("insert");
    }
    let seen: Vec<(String, i64)> = hosts.iter().map(|h| (h.clone(), 7_000)).collect();
    store.update_last_seen(&seen).await.expect("flush");
    let loaded = store.load_agents().await.expect("load");
    let bulk: Vec<&AgentRecord> = loaded.iter().filter(|a| a.req.hostname.starts_with("bulk-")).collect();
    assert_eq!(bulk.len(), 2500);
    assert!(
        bulk.iter().all(|a| a.last_seen_ms == 7_000),
        "every last-seen time written"
    );
    let items: Vec<TimedTransition> = (0..2500)
        .map(|i| {
            let host = &hosts[i / 2];
            let kind = if i % 2 == 0 {
                TransitionKind::Fired
            } else {
                TransitionKind::Resolved
            };
            bulk_transition(host, kind, 10_000 + i64::try_from(i).unwrap_or(0))
        })
        .collect();
    let r = store.ingest(hosts[0].clone(), items.clone()).await.expect("ingest");
    assert_eq!((r.accepted, r.duplicates), (2500, 0));
    let again = store.ingest(hosts[0].clone(), items).await.expect("again");
    assert_eq!((again.accepted, again.duplicates), (0, 2500));
    let resolved = store
        .findings(&FindingFilter {
            state: Some(FindingState::Resolved),
            limit: 10_000,
            ..FindingFilter::default()
        })
        .await
        .expect("findings");
    assert_eq!(
        resolved.iter().filter(|f| f.host.starts_with("bulk-")).count(),
        1250,
        "each finding at its latest transition"
    );
}

#[tokio::test]
async fn sqlite_store_writes_thousands_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    many_at_once(Arc::new(SqliteStore::open(dir.path()).await.expect("open"))).await;
}

#[tokio::test]
async fn postgres_store_writes_thousands_at_once() {
    let cluster = pg::PgCluster::start();
    let url = DatabaseUrl::parse(&cluster.default_url()).expect("a postgres:// URL");
    many_at_once(Arc::new(PgStore::connect(&url).await.expect("connect"))).await;
}

/// Two replicas (two stores, two pools) flushing the same agents' last-seen
/// times at the same moment, handed them in opposite orders: both flushes
/// succeed every round (none is chosen as a deadlock victim) and the newest
/// time wins.
#[tokio::test]
async fn two_postgres_replicas_flush_the_same_agents_at_once_without_deadlock() {
    let cluster = pg::PgCluster::start();
    let url = DatabaseUrl::parse(&cluster.default_url()).expect("a postgres:// URL");
    let a: Arc<dyn Store> = Arc::new(PgStore::connect(&url).await.expect("connect a"));
    let b: Arc<dyn Store> = Arc::new(PgStore::connect(&url).await.expect("connect b"));
    let hosts: Vec<String> = (0..300).map(|i| format!("flush-{i:03}")).collect();
    for h in &hosts {
        a.upsert_agent(&agent(h, 1_000)).await.expect("insert");
    }
    for round in 0..40_i64 {
        let forward: Vec<(String, i64)> = hosts.iter().map(|h| (h.clone(), 10_000 + 2 * round)).collect();
        let backward: Vec<(String, i64)> = hosts.iter().rev().map(|h| (h.clone(), 10_001 + 2 * round)).collect();
        let (ra, rb) = tokio::join!(a.update_last_seen(&forward), b.update_last_seen(&backward));
        ra.unwrap_or_else(|e| panic!("round {round}: replica a's flush failed: {e}"));
        rb.unwrap_or_else(|e| panic!("round {round}: replica b's flush failed: {e}"));
    }
    let loaded = a.load_agents().await.expect("load");
    let flushed: Vec<&AgentRecord> = loaded.iter().filter(|r| r.req.hostname.starts_with("flush-")).collect();
    assert_eq!(flushed.len(), 300);
    assert!(
        flushed.iter().all(|r| r.last_seen_ms == 10_001 + 2 * 39),
        "every agent at the newest time flushed"
    );
}

fn bulk_transition(host: &str, kind: TransitionKind, at_ms: i64) -> TimedTransition {
    let at = Timestamp::from_unix_ms(at_ms);
    TimedTransition {
        at_ms,
        transition: FindingTransition {
            transition: kind,
            at,
            finding: Finding {
                id: finding_id(host, FindingKind::NicDrops, "eth0"),
                host: host.to_owned(),
                kind: FindingKind::NicDrops,
                subject: "eth0".into(),
                severity: Severity::Warning,
                state: if kind == TransitionKind::Resolved {
                    FindingState::Resolved
                } else {
                    FindingState::Firing
                },
                since: at,
                last_seen: at,
                resolved_at: (kind == TransitionKind::Resolved).then_some(at),
                summary: String::new(),
                evidence: Default::default(),
                runbook: "nic-drops".into(),
            },
        },
    }
}

async fn after_reopen(store: Arc<dyn Store>) {
    assert_eq!(store.transition_count().await.expect("count"), 3);
    assert_eq!(store.revert_all_epoch().await.expect("epoch"), 8);
    assert_eq!(
        store.safety_lever().await.expect("lever").map(|l| l.reason),
        Some("second".to_owned())
    );
    assert_eq!(store.load_agents().await.expect("agents").len(), 1);
    let c = store.load_faults(FaultSelection::Id("flt-c")).await.expect("c");
    assert_eq!(
        c[0].agents["n1"].agent_at_ms,
        Some(31_900),
        "the agent's time is stored"
    );
    store.close().await;
}
