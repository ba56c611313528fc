//! deploy/k8s: every overlay rendered by `kubectl
//! kustomize` (Debian's kubectl 1.20, kustomize v2 built in) and validated
//! offline against the Kubernetes schemas (kubernetes-validate, strict, the
//! oldest and newest Kubernetes versions it knows), then checked for what a
//! schema cannot see: selectors that select, ports that exist, the agent's
//! identity, mounts and capabilities, RBAC limited to what is needed, and the
//! agent config in the ConfigMap accepted by the real agent.
//!
//! The image the manifests run is built and started for real in
//! tests/tests/deploy_image.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use graydar_tests::agent::agent_bin;
use graydar_tests::deploy::{kubectl, tool, tool_ok, workspace};
use serde_yaml::Value;

/// Kubernetes versions validated against (kubernetes-validate's oldest and newest).
const K8S_VERSIONS: &[&str] = &["1.25.0", "1.37.0"];
/// Kinds kubernetes-validate has no schema for (Prometheus Operator CRDs);
/// checked structurally below instead.
const CRD_KINDS: &[&str] = &["PodMonitor", "ServiceMonitor", "PrometheusRule"];
const OVERLAYS: &[&str] = &["default", "agent-only", "prometheus-operator", "legacy-kernel", "ha"];
/// Capabilities the agent may be given, each for a named feature (see the
/// comments in deploy/k8s/agent/daemonset.yaml).
const AGENT_CAPS: &[&str] = &["BPF", "PERFMON", "NET_ADMIN"];

fn k8s_dir() -> PathBuf {
    workspace().join("deploy/k8s")
}

fn render(dir: &Path) -> String {
    let out = tool_ok(kubectl(), [std::ffi::OsStr::new("kustomize"), dir.as_os_str()], None);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn docs(rendered: &str) -> Vec<Value> {
    rendered
        .split("\n---\n")
        .map(|d| serde_yaml::from_str::<Value>(d).unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{d}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn s(v: &Value) -> String {
    v.as_str().map(str::to_owned).unwrap_or_default()
}

fn seq(v: &Value) -> Vec<Value> {
    v.as_sequence().cloned().unwrap_or_default()
}

fn kind<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn named<'a>(objs: &'a [Value], k: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == k && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {k} {name} in the rendered manifests"))
}

/// Runs kubernetes-validate (strict) on `rendered`; panics on any error and
/// on a missing schema for a kind other than [`CRD_KINDS`].
fn validate(what: &str, rendered: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join(format!("{what}.yaml"));
    std::fs::write(&file, rendered).expect("write rendered manifests");
    for version in K8S_VERSIONS {
        let out = tool(
            "python3",
            [
                "-m",
                "kubernetes_validate",
                "--strict",
                "-k",
                version,
                &file.to_string_lossy(),
            ],
            None,
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains("No module named kubernetes_validate"),
            "kubernetes-validate is missing: `cargo xtask setup` installs it"
        );
        assert!(
            out.status.success(),
            "{what}: kubernetes-validate -k {version} failed:\n{text}"
        );
        let mut passed = 0;
        for line in text.lines() {
            if line.starts_with("INFO") && line.contains(" passed for resource ") {
                passed += 1;
            } else if line.starts_with("WARN") && CRD_KINDS.iter().any(|k| line.contains(&format!("kind {k} "))) {
            } else if !line.trim().is_empty() {
                panic!("{what}: kubernetes-validate -k {version}: unexpected output: {line}\n{text}");
            }
        }
        let objects = docs(rendered).len();
        let crds = docs(rendered)
            .iter()
            .filter(|o| CRD_KINDS.contains(&s(&o["kind"]).as_str()))
            .count();
        assert_eq!(
            passed,
            objects - crds,
            "{what}: not every object was validated:\n{text}"
        );
    }
}

#[test]
fn every_overlay_renders_and_validates_offline() {
    let overlays: BTreeSet<String> = std::fs::read_dir(k8s_dir().join("overlays"))
        .expect("read overlays")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("kustomization.yaml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = OVERLAYS.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(overlays, listed, "overlays on disk vs OVERLAYS in this test");
    for overlay in OVERLAYS {
        let rendered = render(&k8s_dir().join("overlays").join(overlay));
        validate(overlay, &rendered);
        check_consistency(overlay, &docs(&rendered));
    }
}

/// The PrometheusRule of the prometheus-operator overlay carries exactly the
/// groups of deploy/prometheus/graydar.rules.yml (generated from it by
/// generate-prometheusrule.sh), has the Prometheus Operator's structure (no
/// schema offline: checked here), and `promtool check rules` accepts its
/// groups as rendered.
#[test]
fn prometheus_rule_carries_the_rules_file() {
    let rendered = render(&k8s_dir().join("overlays/prometheus-operator"));
    let objs = docs(&rendered);
    let rule = named(&objs, "PrometheusRule", "graydar");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    let rules_path = workspace().join("deploy/prometheus/graydar.rules.yml");
    let text = std::fs::read_to_string(&rules_path).expect("read graydar.rules.yml");
    let file: Value = serde_yaml::from_str(&text).expect("graydar.rules.yml is YAML");
    assert!(
        rule["spec"]["groups"] == file["groups"],
        "the PrometheusRule's groups differ from deploy/prometheus/graydar.rules.yml: run \
         deploy/k8s/overlays/prometheus-operator/generate-prometheusrule.sh"
    );
    // monitoring.coreos.com/v1 PrometheusRule: spec.groups[].{name, interval,
    // rules[].{alert|record, expr, for, keep_firing_for, labels, annotations}}.
    let spec = rule["spec"].as_mapping().expect("spec");
    assert_eq!(spec.len(), 1, "spec has only groups: {spec:?}");
    let mut names = BTreeSet::new();
    for g in seq(&rule["spec"]["groups"]) {
        for k in g.as_mapping().expect("group").keys() {
            assert!(
                ["name", "interval", "rules", "limit", "partial_response_strategy"].contains(&s(k).as_str()),
                "unknown group field {k:?}"
            );
        }
        assert!(names.insert(s(&g["name"])), "duplicate group {:?}", g["name"]);
        for r in seq(&g["rules"]) {
            let m = r.as_mapping().expect("rule");
            for k in m.keys() {
                assert!(
                    [
                        "alert",
                        "record",
                        "expr",
                        "for",
                        "keep_firing_for",
                        "labels",
                        "annotations"
                    ]
                    .contains(&s(k).as_str()),
                    "unknown rule field {k:?} in {r:?}"
                );
            }
            assert!(
                r.get("alert").is_some() != r.get("record").is_some(),
                "a rule is an alert or a record: {r:?}"
            );
            assert!(r["expr"].is_string(), "expr: {r:?}");
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let extracted = dir.path().join("rules.yml");
    let mut doc = serde_yaml::Mapping::new();
    doc.insert("groups".into(), rule["spec"]["groups"].clone());
    std::fs::write(&extracted, serde_yaml::to_string(&doc).expect("to YAML")).expect("write rules");
    let out = tool_ok("promtool", ["check", "rules", &extracted.to_string_lossy()], None);
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS"));
}

/// Negative control: the validator really rejects an unknown field.
#[test]
fn kubernetes_validate_rejects_an_unknown_field() {
    let rendered = render(&k8s_dir().join("overlays/agent-only"));
    let broken = rendered.replace("hostNetwork: true", "hostNetwork: true\n      hostNetwerk: true");
    assert_ne!(broken, rendered);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, broken).expect("write");
    let out = tool(
        "python3",
        ["-m", "kubernetes_validate", "--strict", &file.to_string_lossy()],
        None,
    );
    assert!(!out.status.success(), "kubernetes-validate accepted an unknown field");
}

/// What the schemas cannot check.
fn check_consistency(overlay: &str, objs: &[Value]) {
    let ctx = |msg: &str| format!("overlay {overlay}: {msg}");
    // Namespaced objects all in graydar; no cluster-wide RBAC.
    for o in objs {
        let k = s(&o["kind"]);
        let name = s(&o["metadata"]["name"]);
        if k != "Namespace" {
            assert_eq!(
                o["metadata"]["namespace"],
                "graydar",
                "{}",
                ctx(&format!("{k} {name} namespace"))
            );
        }
        assert!(
            k != "ClusterRole" && k != "ClusterRoleBinding",
            "{}",
            ctx(&format!(
                "cluster-wide RBAC {k} {name}: neither component calls the API"
            ))
        );
        if k == "ServiceAccount" {
            assert_eq!(
                o["automountServiceAccountToken"],
                false,
                "{}",
                ctx(&format!("{name} mounts an API token"))
            );
        }
        if k == "Role" {
            for rule in seq(&o["rules"]) {
                for verb in seq(&rule["verbs"]) {
                    assert!(
                        ["get", "list", "watch"].contains(&s(&verb).as_str()),
                        "{}",
                        ctx(&format!("Role {name} grants {verb:?}"))
                    );
                }
            }
        }
    }
    let ns = named(objs, "Namespace", "graydar");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );

    // The agent DaemonSet.
    let ds = named(objs, "DaemonSet", "graydar-agent");
    let pod = &ds["spec"]["template"]["spec"];
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in ds["spec"]["selector"]["matchLabels"].as_mapping().expect("selector") {
        assert_eq!(&labels[k], v, "{}", ctx("DaemonSet selector does not select its pods"));
    }
    assert_eq!(pod["hostNetwork"], true, "{}", ctx("hostNetwork"));
    assert!(
        seq(&pod["tolerations"])
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "{}",
        ctx("the agent must tolerate every taint")
    );
    let c = &seq(&pod["containers"])[0];
    let env: BTreeMap<String, Value> = seq(&c["env"]).iter().map(|e| (s(&e["name"]), e.clone())).collect();
    assert_eq!(
        env["GRAYDAR_HOSTNAME"]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName",
        "{}",
        ctx("the node name is the agent's identity")
    );
    let mounts: BTreeMap<String, String> = seq(&c["volumeMounts"])
        .iter()
        .map(|m| (s(&m["mountPath"]), s(&m["name"])))
        .collect();
    let host_paths: BTreeMap<String, String> = seq(&pod["volumes"])
        .iter()
        .filter(|v| v.get("hostPath").is_some())
        .map(|v| (s(&v["name"]), s(&v["hostPath"]["path"])))
        .collect();
    let host_path_at = |mount: &str| -> String {
        let vol = mounts
            .get(mount)
            .unwrap_or_else(|| panic!("{}", ctx(&format!("nothing mounted at {mount}"))));
        host_paths.get(vol).cloned().unwrap_or_default()
    };
    let procfs = s(&env["PROCFS_ROOT"]["value"]);
    let sysfs = s(&env["SYSFS_ROOT"]["value"]);
    assert_eq!(
        host_path_at(&procfs),
        "/proc",
        "{}",
        ctx("PROCFS_ROOT is the host's /proc")
    );
    assert_eq!(host_path_at(&sysfs), "/sys", "{}", ctx("SYSFS_ROOT is the host's /sys"));
    for p in ["/sys/fs/bpf", "/sys/kernel/tracing", "/var/lib/graydar"] {
        assert_eq!(host_path_at(p), p, "{}", ctx(&format!("host {p}")));
    }
    let port = seq(&c["ports"])
        .into_iter()
        .find(|p| p["containerPort"] == 9477)
        .unwrap_or_else(|| panic!("{}", ctx("no port 9477")));
    // The path-probe mesh's UDP port ([paths] port, default 9478) is declared.
    let mesh = seq(&c["ports"])
        .into_iter()
        .find(|p| p["name"] == "path-mesh")
        .unwrap_or_else(|| panic!("{}", ctx("no port named path-mesh")));
    assert_eq!(mesh["containerPort"], 9478, "{}", ctx("path-mesh port"));
    assert_eq!(mesh["protocol"], "UDP", "{}", ctx("path-mesh protocol"));
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{}", ctx(probe));
        assert_eq!(c[probe]["httpGet"]["port"], port["name"], "{}", ctx(probe));
    }
    for r in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                c["resources"][r][res].is_string(),
                "{}",
                ctx(&format!("agent {r}.{res} missing"))
            );
        }
    }
    assert_eq!(
        ds["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
        "9477",
        "{}",
        ctx("scrape annotation")
    );
    let sc = &c["securityContext"];
    let added: Vec<String> = seq(&sc["capabilities"]["add"]).iter().map(s).collect();
    for cap in &added {
        assert!(
            AGENT_CAPS.contains(&cap.as_str()),
            "{}",
            ctx(&format!("unexpected capability {cap}"))
        );
    }
    assert_eq!(
        seq(&sc["capabilities"]["drop"]),
        vec![Value::from("ALL")],
        "{}",
        ctx("drop ALL")
    );
    // The API server rejects allowPrivilegeEscalation=false with privileged
    // or CAP_SYS_ADMIN; the schema cannot know that.
    if sc["allowPrivilegeEscalation"] == false {
        assert!(
            sc["privileged"] != true && !added.iter().any(|c| c == "SYS_ADMIN"),
            "{}",
            ctx("allowPrivilegeEscalation: false with privileged or SYS_ADMIN is rejected by the API server")
        );
    }
    // The config in the ConfigMap is accepted by the real agent.
    let cm_name = seq(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == mounts["/etc/graydar"].as_str())
        .map(|v| s(&v["configMap"]["name"]))
        .unwrap_or_default();
    let cm = named(objs, "ConfigMap", &cm_name);
    agent_accepts_config(&s(&cm["data"]["agent.toml"]), &ctx("ConfigMap agent.toml"));

    // The controller, where the overlay has one.
    if let Some(dep) = kind(objs, "Deployment")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "graydar-controller")
    {
        let pod = &dep["spec"]["template"]["spec"];
        let pod_labels = &dep["spec"]["template"]["metadata"]["labels"];
        let c = &seq(&pod["containers"])[0];
        let env: BTreeMap<String, Value> = seq(&c["env"]).iter().map(|e| (s(&e["name"]), e.clone())).collect();
        match env.get("GRAYDAR_DATABASE_URL") {
            // SQLite on a volume: one writer, never two pods at once.
            None => {
                assert_eq!(dep["spec"]["replicas"], 1, "{}", ctx("one SQLite writer"));
                assert_eq!(dep["spec"]["strategy"]["type"], "Recreate", "{}", ctx("Recreate"));
            }
            // PostgreSQL: several replicas, the URL from a Secret, nothing
            // kept in the pod, a disruption budget that keeps one.
            Some(url) => {
                let replicas = dep["spec"]["replicas"].as_u64().unwrap_or(0);
                assert!(
                    replicas >= 2,
                    "{}",
                    ctx(&format!("{replicas} replica(s) on PostgreSQL"))
                );
                let key = &url["valueFrom"]["secretKeyRef"];
                let sec = named(objs, "Secret", &s(&key["name"]));
                let k = s(&key["key"]);
                let value = sec["stringData"][k.as_str()].as_str().unwrap_or_default();
                assert!(
                    value.starts_with("postgres://") || sec["data"][k.as_str()].is_string(),
                    "{}",
                    ctx("the database URL Secret")
                );
                assert!(
                    kind(objs, "PersistentVolumeClaim").is_empty()
                        && seq(&pod["volumes"])
                            .iter()
                            .all(|v| v.get("persistentVolumeClaim").is_none()),
                    "{}",
                    ctx("a volume claim beside PostgreSQL")
                );
                assert_ne!(
                    dep["spec"]["strategy"]["type"],
                    "Recreate",
                    "{}",
                    ctx("Recreate: an outage per rollout")
                );
                let pdbs = kind(objs, "PodDisruptionBudget");
                let pdb = pdbs
                    .iter()
                    .find(|p| {
                        p["spec"]["selector"]["matchLabels"]
                            .as_mapping()
                            .is_some_and(|m| m.iter().all(|(k, v)| &pod_labels[k] == v))
                    })
                    .unwrap_or_else(|| panic!("{}", ctx("no PodDisruptionBudget selects the controller")));
                let min = pdb["spec"]["minAvailable"].as_u64().unwrap_or(0);
                assert!((1..replicas).contains(&min), "{}", ctx(&format!("minAvailable {min}")));
            }
        }
        let args: Vec<String> = seq(&c["args"]).iter().map(s).collect();
        assert!(
            args.contains(&"--data-dir=/var/lib/graydar-controller".to_owned()),
            "{}",
            ctx("data dir")
        );
        for v in seq(&pod["volumes"]) {
            if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                named(objs, "PersistentVolumeClaim", claim);
            }
            if let Some(secret) = v["secret"]["secretName"].as_str() {
                let sec = named(objs, "Secret", secret);
                assert!(
                    sec["stringData"]["tokens"].is_string() || sec["data"]["tokens"].is_string(),
                    "{}",
                    ctx("tokens key")
                );
            }
        }
        let svc = named(objs, "Service", "graydar-controller");
        for (k, v) in svc["spec"]["selector"].as_mapping().expect("service selector") {
            assert_eq!(
                &pod_labels[k],
                v,
                "{}",
                ctx("Service selector does not select the controller")
            );
        }
        let port_names: Vec<Value> = seq(&c["ports"]).iter().map(|p| p["name"].clone()).collect();
        for p in seq(&svc["spec"]["ports"]) {
            assert!(port_names.contains(&p["targetPort"]), "{}", ctx("Service targetPort"));
        }
    }

    // Prometheus Operator objects select what exists.
    for pm in kind(objs, "PodMonitor") {
        for (k, v) in pm["spec"]["selector"]["matchLabels"].as_mapping().expect("selector") {
            assert_eq!(&labels[k], v, "{}", ctx("PodMonitor selects no agent pod"));
        }
        for ep in seq(&pm["spec"]["podMetricsEndpoints"]) {
            assert_eq!(ep["port"], port["name"], "{}", ctx("PodMonitor port"));
        }
        assert_eq!(
            labels[pm["spec"]["jobLabel"].as_str().unwrap_or_default()],
            "graydar-agent"
        );
    }
    for sm in kind(objs, "ServiceMonitor") {
        let svc = named(objs, "Service", "graydar-controller");
        for (k, v) in sm["spec"]["selector"]["matchLabels"].as_mapping().expect("selector") {
            assert_eq!(
                &svc["metadata"]["labels"][k],
                v,
                "{}",
                ctx("ServiceMonitor selects no Service")
            );
        }
        let svc_ports: Vec<Value> = seq(&svc["spec"]["ports"]).iter().map(|p| p["name"].clone()).collect();
        for ep in seq(&sm["spec"]["endpoints"]) {
            assert!(svc_ports.contains(&ep["port"]), "{}", ctx("ServiceMonitor port"));
            let secret = s(&ep["authorization"]["credentials"]["name"]);
            named(objs, "Secret", &secret);
        }
    }
    // One image, tagged.
    let images: BTreeSet<String> = objs
        .iter()
        .flat_map(|o| seq(&o["spec"]["template"]["spec"]["containers"]))
        .map(|c| s(&c["image"]))
        .collect();
    assert_eq!(images.len(), 1, "{}", ctx(&format!("images {images:?}")));
    assert!(images.iter().all(|i| i.contains(':')), "{}", ctx("untagged image"));
}

fn agent_accepts_config(toml: &str, what: &str) {
    let bin = agent_bin();
    assert!(
        bin.is_file(),
        "{} is missing: cargo build -p graydar-agent",
        bin.display()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, toml).expect("write agent.toml");
    let out = tool(
        &bin,
        [
            std::ffi::OsStr::new("--config"),
            path.as_os_str(),
            "--print-config".as_ref(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{what}: graydar-agent rejects it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The user overlay the README documents: tokens from a local file replace
/// the shipped empty Secret, the image comes from the user's registry.
#[test]
fn documented_user_overlay_with_tokens_renders() {
    let dir = tempfile::tempdir().expect("temp dir");
    // kustomize v2 wants a relative path to the base.
    let depth = dir.path().components().count() - 1;
    let up = "../".repeat(depth);
    let base = format!(
        "{up}{}",
        k8s_dir()
            .join("overlays/default")
            .to_string_lossy()
            .trim_start_matches('/')
    );
    std::fs::write(dir.path().join("tokens"), "agent:aaa\nviewer:bbb\noperator:ccc\n").expect("tokens");
    std::fs::write(dir.path().join("token"), "aaa").expect("agent token");
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "namespace: graydar\nbases:\n  - {base}\nsecretGenerator:\n  - name: graydar-controller-tokens\n    \
             behavior: replace\n    files:\n      - tokens\n  - name: graydar-agent-token\n    \
             behavior: replace\n    files:\n      - token\nimages:\n  - name: localhost/graydar\n    \
             newName: registry.example.com/graydar\n    newTag: 0.1.0\n"
        ),
    )
    .expect("kustomization");
    let rendered = render(dir.path());
    validate("user-overlay", &rendered);
    let objs = docs(&rendered);
    check_consistency("user-overlay", &objs);
    let secret = named(&objs, "Secret", "graydar-controller-tokens");
    assert_eq!(
        secret["data"]["tokens"],
        "YWdlbnQ6YWFhCnZpZXdlcjpiYmIKb3BlcmF0b3I6Y2NjCg=="
    );
    assert!(
        secret.get("stringData").is_none(),
        "the empty shipped tokens must be gone: {secret:?}"
    );
    assert!(rendered.contains("image: registry.example.com/graydar:0.1.0"));
    // The agents report to this installation's controller with the agent token.
    let agent_secret = named(&objs, "Secret", "graydar-agent-token");
    assert_eq!(agent_secret["data"]["token"], "YWFh", "{agent_secret:?}");
    let ds = named(&objs, "DaemonSet", "graydar-agent");
    let env = seq(&ds["spec"]["template"]["spec"]["containers"][0]["env"]);
    assert!(
        env.iter().any(|e| e["name"] == "GRAYDAR_CONTROLLER_TOKEN"
            && e["valueFrom"]["secretKeyRef"]["name"] == "graydar-agent-token"),
        "{env:?}"
    );
    let cm = kind(&objs, "ConfigMap")
        .into_iter()
        .find(|c| s(&c["metadata"]["name"]).starts_with("graydar-agent-config"))
        .expect("agent ConfigMap");
    assert!(
        s(&cm["data"]["agent.toml"]).contains("url = \"http://graydar-controller.graydar.svc:8477\""),
        "{cm:?}"
    );
}
