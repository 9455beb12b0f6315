//! kpool's CRDs and admission rules on a real kube-apiserver (`tests/support_kube`):
//!
//! - every CRD of `crds/` applies server-side (structural schema, CEL rules compiled within
//!   their cost limits) without a warning, becomes Established and is stored as written;
//! - `kubectl explain` prints the doc comment of every field (written in `src/api`);
//! - short names, the `kpool` category and the printer columns work in `kubectl get`;
//! - every manifest of `deploy/examples/` is admitted and reads back as written, only
//!   defaulted (nothing pruned);
//! - every case of the admission corpus (`tests/support_admission`) gets from the server
//!   the answer `tests/admission.rs` computes in memory: admitted, or rejected at the same
//!   field.

mod support_admission;
mod support_kube;

use std::collections::{BTreeMap, BTreeSet};

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::{json, Value};
use support_admission::{admit, cases, check, examples, normalise, schema, Finding};
use support_kube::{cluster, root, Cluster, KINDS};

const FIELD_MANAGER: &str = "kpool-tests";

fn api(client: &Client, namespace: &str, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("kpool.dev", "v1alpha1", kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, &format!("{}s", kind.to_lowercase()));
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// `obj` named `name` in `namespace`.
fn placed(obj: &Value, namespace: &str, name: &str) -> DynamicObject {
    let mut obj = obj.clone();
    obj["metadata"]["name"] = json!(name);
    obj["metadata"]["namespace"] = json!(namespace);
    serde_json::from_value(obj).expect("a kpool object")
}

/// Deletes a test's namespace once the test has passed (a failed test leaves it to look at).
fn delete_namespace(cluster: &Cluster, ns: &str) {
    cluster.kubectl_ok(&["delete", "namespace", ns, "--wait=false"]);
}

fn crd(plural: &str) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(root().join(format!("crds/{plural}.kpool.dev.yaml"))).unwrap())
        .unwrap()
}

#[test]
fn every_crd_applies_server_side_is_established_and_is_stored_as_written() {
    let cluster = cluster();
    cluster.install_crds();
    // Applied again by hand to see what the server says about them: a warning (a CEL rule
    // near its cost limit, an unknown format, a deprecated field) fails the test.
    let crds = root().join("crds");
    let out = cluster
        .kubectl()
        .args(["apply", "--server-side", &format!("--field-manager={FIELD_MANAGER}"), "-f"])
        .arg(&crds)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", support_kube::describe(&out));
    assert!(out.stderr.is_empty(), "warnings: {}", String::from_utf8_lossy(&out.stderr));
    for plural in KINDS {
        let live: Value =
            serde_json::from_str(&cluster.kubectl_ok(&["get", "crd", &format!("{plural}.kpool.dev"), "-o", "json"]))
                .unwrap();
        let conditions: BTreeMap<&str, &str> = live["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["type"].as_str().unwrap(), c["status"].as_str().unwrap()))
            .collect();
        assert_eq!(
            conditions,
            BTreeMap::from([("Established", "True"), ("NamesAccepted", "True")]),
            "{plural}: {:#}",
            live["status"]
        );
        let file = crd(plural);
        let changed = difference("", &file["spec"]["versions"], &live["spec"]["versions"]);
        assert!(changed.is_none(), "{plural}: the server stores another CRD than crds/ has: {}", changed.unwrap());
        assert_eq!(live["status"]["acceptedNames"]["shortNames"], file["spec"]["names"]["shortNames"], "{plural}");
        assert_eq!(live["status"]["acceptedNames"]["categories"], json!(["kpool"]), "{plural}");
    }
}

/// `(path, schema)` of every node of `schema` that has fields, below `path`.
fn documented_nodes(path: &str, schema: &Value, out: &mut Vec<(String, Value)>) {
    let schema = if schema["type"] == "array" { &schema["items"] } else { schema };
    let Some(props) = schema["properties"].as_object() else { return };
    out.push((path.to_string(), schema.clone()));
    for (name, sub) in props {
        documented_nodes(&format!("{path}.{name}"), sub, out);
    }
}

fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn kubectl_explain_prints_the_doc_comment_of_every_field() {
    let cluster = cluster();
    cluster.install_crds();
    // One doc comment, as written in src/api/run.rs.
    let resources = eventually_explained(cluster, "run.spec.resources");
    assert!(resources.contains("What the machine must have, in dstack's syntax"), "{resources}");
    let mut checked = 0;
    for plural in KINDS {
        let kind = plural.trim_end_matches('s');
        let root_schema = &crd(plural)["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut nodes = Vec::new();
        for part in ["spec", "status"] {
            documented_nodes(&format!("{kind}.{part}"), &root_schema["properties"][part], &mut nodes);
        }
        for (path, node) in nodes {
            let explained = words(&eventually_explained(cluster, &path));
            for (name, field) in node["properties"].as_object().unwrap() {
                let doc = field["description"].as_str().unwrap_or_else(|| panic!("{path}.{name} has no doc comment"));
                assert!(explained.contains(&words(doc)), "kubectl explain {path} lacks the doc of {name}: {doc:?}");
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "fields checked: {checked}");
}

/// `kubectl explain path`, retried while the CRD's OpenAPI document is being published.
fn eventually_explained(cluster: &Cluster, path: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = cluster.kubectl().args(["explain", path]).output().unwrap();
        if out.status.success() {
            return String::from_utf8(out.stdout).unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "kubectl explain {path}: {}", support_kube::describe(&out));
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// An example, by file, and how `kubectl get <short>` prints it.
struct Printed {
    file: &'static str,
    short: &'static str,
    /// A status as the controllers would write it.
    status: Value,
    /// The cells `kubectl get -o wide` must then print, by column header.
    cells: Vec<(&'static str, &'static str)>,
}

fn printed() -> Vec<Printed> {
    let ready = json!([{"type": "Ready", "status": "True", "reason": "OffersRead", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
    vec![
        Printed {
            file: "backend-aws.yaml",
            short: "kb",
            status: json!({"conditions": ready, "offers": 3}),
            cells: vec![
                ("NAME", "aws"),
                ("TYPE", "aws"),
                ("REGIONS", r#"["us-east-1","us-west-2"]"#),
                ("READY", "True"),
            ],
        },
        Printed {
            file: "instance.yaml",
            short: "kin",
            status: json!({"pool": "training", "phase": "Busy", "run": "finetune",
                           "resources": "96xCPU, 1152GB, 8xA100 (80GB)",
                           "offer": {"backend": "aws", "region": "us-east-1", "instanceType": "p4de.24xlarge",
                                     "cpu": 96, "memory": 1152, "price": 40.97, "spot": true}}),
            cells: vec![
                ("NAME", "a100-box"),
                ("POOL", "training"),
                ("BACKEND", "aws"),
                ("REGION", "us-east-1"),
                ("RESOURCES", "96xCPU, 1152GB, 8xA100 (80GB)"),
                ("SPOT", "true"),
                ("PRICE", "40.97"),
                ("STATUS", "Busy"),
                ("RUN", "finetune"),
            ],
        },
        Printed {
            file: "pool.yaml",
            short: "kpl",
            status: json!({"idle": 2, "busy": 1, "provisioning": 3, "pricePerHour": 12.5}),
            cells: vec![
                ("NAME", "training"),
                ("PROFILE", "spot-gpu"),
                ("MAX", "8"),
                ("IDLE", "2"),
                ("BUSY", "1"),
                ("PROVISIONING", "3"),
                ("$/HOUR", "12.5"),
            ],
        },
        Printed {
            file: "profile-spot-gpu.yaml",
            short: "kprof",
            status: json!({}),
            cells: vec![("NAME", "spot-gpu"), ("SPOT", "auto"), ("MAX PRICE", "4.5"), ("IDLE", "30m")],
        },
        Printed {
            file: "run.yaml",
            short: "krun",
            status: json!({"instance": "a100-box", "phase": "Failed", "terminationReason": "ContainerExitedWithError", "exitCode": 2}),
            cells: vec![
                ("NAME", "finetune"),
                ("INSTANCE", "a100-box"),
                ("STATUS", "Failed"),
                ("REASON", "ContainerExitedWithError"),
                ("EXIT", "2"),
            ],
        },
    ]
}

/// The headers and rows of a `kubectl get` table, a row as `header -> cell` (cells are
/// aligned under their header; an empty cell is blank).
fn table(text: &str) -> (Vec<String>, Vec<BTreeMap<String, String>>) {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().expect("a header");
    // A column starts where a header starts after a gap of at least two spaces.
    let mut starts = vec![0];
    for (i, _) in header.match_indices("  ") {
        if let Some(next) = header[i..].find(|c: char| c != ' ') {
            starts.push(i + next);
        }
    }
    starts.dedup();
    let cell = |line: &str, k: usize| {
        let end = starts.get(k + 1).copied().unwrap_or(line.len()).min(line.len());
        line.get(starts[k].min(line.len())..end).unwrap_or("").trim().to_string()
    };
    let names: Vec<String> = (0..starts.len()).map(|k| cell(header, k)).collect();
    let rows = lines.map(|line| names.iter().enumerate().map(|(k, n)| (n.clone(), cell(line, k))).collect()).collect();
    (names, rows)
}

/// NAME and the headers of the CRD's printer columns (`wide`: with the priority ones).
fn headers(plural: &str, wide: bool) -> Vec<String> {
    let columns = crd(plural)["spec"]["versions"][0]["additionalPrinterColumns"].as_array().unwrap().clone();
    let shown = columns.iter().filter(|c| wide || c["priority"].as_i64().unwrap_or(0) == 0);
    std::iter::once("NAME".to_string()).chain(shown.map(|c| c["name"].as_str().unwrap().to_uppercase())).collect()
}

#[tokio::test]
async fn short_names_categories_and_printer_columns_work_in_kubectl_get() {
    let cluster = cluster();
    cluster.install_crds();
    let client = cluster.client().await;
    let ns = cluster.namespace("adm-columns").await;
    let examples = examples();
    for Printed { file, short, status, cells } in printed() {
        let (_, obj) = examples.iter().find(|(f, _)| f == file).unwrap();
        let kind = obj["kind"].as_str().unwrap();
        let plural = format!("{}s", kind.to_lowercase());
        let name = obj["metadata"]["name"].as_str().unwrap();
        let api = api(&client, &ns, kind);
        api.create(&PostParams::default(), &placed(obj, &ns, name)).await.unwrap_or_else(|e| panic!("{file}: {e}"));
        if status != json!({}) {
            let patch = Patch::Merge(json!({"status": status}));
            api.patch_status(name, &PatchParams::default(), &patch).await.unwrap_or_else(|e| panic!("{file}: {e}"));
        }
        for wide in [false, true] {
            let mut args = vec!["get", short, name, "-n", &ns];
            if wide {
                args.extend(["-o", "wide"]);
            }
            let printed = cluster.kubectl_ok(&args);
            let (header, rows) = table(&printed);
            assert_eq!(header, headers(&plural, wide), "kubectl get {short}:\n{printed}");
            assert_eq!(rows.len(), 1, "{printed}");
            for (column, value) in &cells {
                match rows[0].get(*column) {
                    Some(got) => assert_eq!(got, value, "kubectl get {short}, column {column}:\n{printed}"),
                    None => assert!(!wide, "kubectl get {short} -o wide has no column {column}:\n{printed}"),
                }
            }
            assert!(rows[0]["AGE"].ends_with('s'), "{printed}");
        }
    }
    // The category lists every kind.
    let all = cluster.kubectl_ok(&["get", "kpool", "-n", &ns, "-o", "name"]);
    for plural in KINDS {
        assert!(all.contains(&format!("{}.kpool.dev/", plural.trim_end_matches('s'))), "kubectl get kpool: {all}");
    }
    delete_namespace(cluster, &ns);
}

/// The first place where `b` differs from `a` (numbers compared by value: `2.0` reads back
/// as `2`), as `path: a -> b`.
fn difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    let show = |v: Option<&Value>| v.map_or("(absent)".to_string(), |v| v.to_string().chars().take(120).collect());
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(v), Some(w)) => difference(&format!("{path}/{k}"), v, w),
                (v, w) => Some(format!("{path}/{k}: {} -> {}", show(v), show(w))),
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (v, w))| difference(&format!("{path}/{i}"), v, w))
        }
        _ if a == b => None,
        _ => Some(format!("{path}: {} -> {}", show(Some(a)), show(Some(b)))),
    }
}

/// The example manifests as `kubectl create -f` sends them (YAML read by sigs.k8s.io/yaml,
/// where an unquoted `on`, `off`, `yes` or `no` is a boolean), into `ns`, then each object
/// read back as JSON.
fn created_by_kubectl(cluster: &Cluster, ns: &str) -> Vec<(String, Value)> {
    let dir = root().join("deploy/examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let file = file.to_string_lossy().into_owned();
        let text =
            std::fs::read_to_string(dir.join(&file)).unwrap().replace("namespace: ml\n", &format!("namespace: {ns}\n"));
        let path = std::env::temp_dir().join(format!("{ns}-{file}"));
        std::fs::write(&path, text).unwrap();
        let names = cluster.kubectl_ok(&["create", "-o", "name", "-f", path.to_str().unwrap()]);
        std::fs::remove_file(&path).unwrap();
        for name in names.lines() {
            let back: Value =
                serde_json::from_str(&cluster.kubectl_ok(&["get", "-n", ns, name, "-o", "json"])).unwrap();
            out.push((file.clone(), back));
        }
    }
    out
}

#[tokio::test]
async fn every_example_is_admitted_and_reads_back_as_written() {
    let cluster = cluster();
    cluster.install_crds();
    let client = cluster.client().await;
    // Through the API as JSON (kpool's own clients, and the manifests as YAML 1.2 reads
    // them), and through `kubectl create`: the same objects must come back.
    let (json_ns, kubectl_ns) = (cluster.namespace("adm-examples").await, cluster.namespace("adm-kubectl").await);
    let by_kubectl = created_by_kubectl(cluster, &kubectl_ns);
    let examples = examples();
    assert_eq!(by_kubectl.len(), examples.len(), "objects kubectl created: {by_kubectl:#?}");
    for ((file, obj), (_, via_kubectl)) in examples.iter().zip(&by_kubectl) {
        let kind = obj["kind"].as_str().unwrap();
        let name = obj["metadata"]["name"].as_str().unwrap();
        let api = api(&client, &json_ns, kind);
        api.create(&PostParams::default(), &placed(obj, &json_ns, name))
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let via_json = serde_json::to_value(api.get(name).await.unwrap()).unwrap();
        // What was written, with the schema's defaults filled in (a status, if the schema
        // defaults one): nothing pruned, nothing changed.
        let mut expected = obj.clone();
        expected.as_object_mut().unwrap().remove("status");
        normalise(&schema(kind), &mut expected);
        for (how, back) in [("as JSON", &via_json), ("by kubectl", via_kubectl)] {
            assert_eq!((back["kind"].as_str(), back["metadata"]["name"].as_str()), (Some(kind), Some(name)), "{file}");
            for part in ["spec", "status"] {
                let changed = difference(part, &expected[part], &back[part]);
                assert!(changed.is_none(), "{file}, created {how}, reads back changed: {}", changed.unwrap());
            }
            for key in ["labels", "annotations"] {
                if !obj["metadata"][key].is_null() {
                    assert_eq!(back["metadata"][key], obj["metadata"][key], "{file}, created {how}: metadata.{key}");
                }
            }
        }
    }
    delete_namespace(cluster, &json_ns);
    delete_namespace(cluster, &kubectl_ns);
}

/// The server's answer to a case: the errors of its `422 Invalid` (creating the object,
/// or creating `old` and updating it to the object, both with real resourceVersions;
/// the object itself with a server-side dry run).
async fn server_admit(client: &Client, ns: &str, name: &str, obj: &Value, old: Option<&Value>) -> Vec<Finding> {
    let kind = obj["kind"].as_str().unwrap();
    let api = api(client, ns, kind);
    let dry_run = PostParams { dry_run: true, ..Default::default() };
    let answer = match old {
        None => api.create(&dry_run, &placed(obj, ns, name)).await,
        Some(old) => {
            let stored =
                api.create(&PostParams::default(), &placed(old, ns, name)).await.expect("create the old object");
            let mut new = placed(obj, ns, name);
            new.metadata.resource_version = stored.metadata.resource_version.clone();
            api.replace(name, &dry_run, &new).await
        }
    };
    match answer {
        Ok(_) => Vec::new(),
        Err(kube::Error::Api(status)) if status.code == 422 => {
            let causes = status.details.map(|d| d.causes).unwrap_or_default();
            causes.into_iter().map(|c| Finding { field: c.field, message: c.message }).collect()
        }
        Err(e) => panic!("{name}: {e}"),
    }
}

/// Findings for a failure message, long values cut.
fn shown(findings: &[Finding]) -> String {
    let cut =
        |m: &str| if m.len() > 160 { format!("{}…", m.chars().take(160).collect::<String>()) } else { m.to_string() };
    format!("{:?}", findings.iter().map(|f| format!("{}: {}", f.field, cut(&f.message))).collect::<Vec<_>>())
}

#[tokio::test]
async fn the_real_api_server_answers_every_case_of_the_corpus_as_the_in_memory_admission() {
    let cluster = cluster();
    cluster.install_crds();
    let client = cluster.client().await;
    let ns = cluster.namespace("adm-corpus").await;
    let mut failures = Vec::new();
    let cases = cases();
    for (i, case) in cases.iter().enumerate() {
        let server = server_admit(&client, &ns, &format!("case-{i}"), &case.obj, case.old.as_ref()).await;
        let memory = admit(&case.obj, case.old.as_ref());
        if let Err(e) = check(&case.expected, &server) {
            failures.push(format!("{}: server: {e}\n    in memory: {}", case.name, shown(&memory)));
        }
        // Beyond the expected answer: the same fields (the `<nil>` note included) on both.
        let fields = |f: &[Finding]| f.iter().map(|f| f.field.clone()).collect::<BTreeSet<_>>();
        if fields(&server) != fields(&memory) {
            failures.push(format!("{}: server {}\n    in memory {}", case.name, shown(&server), shown(&memory)));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases:\n{}", failures.len(), cases.len(), failures.join("\n"));
    delete_namespace(cluster, &ns);
}

/// kpool's Events as the API server validates them (`events.k8s.io/v1`: event time,
/// reporting controller and instance, action, series with a count of 2 or more, a note
/// that never changes): the same Event about an object within the series window raises
/// the first one's count by a patch; another note, type or reason starts a new Event.
#[tokio::test]
async fn a_repeated_event_becomes_a_series_and_another_note_a_new_event() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::api::events::v1::Event;
    use kpool::controllers::events::Publisher;
    use kube::Resource;

    let c = cluster();
    let client = c.client().await;
    let ns = c.namespace("events").await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let mut map = ConfigMap::default();
    map.metadata.name = Some("subject".into());
    let map = maps.create(&PostParams::default(), &map).await.expect("create the ConfigMap");
    let publisher = Publisher::new(client.clone(), "kpool", Some("kpool-test-pod".into()));
    let published = [
        (true, "LaunchFailed", "no capacity"),
        (true, "LaunchFailed", "no capacity"),
        (true, "LaunchFailed", "quota exceeded"),
        (true, "LaunchFailed", "no capacity"),
        (false, "Launched", "launched"),
    ];
    for (warning, reason, note) in published {
        publisher.publish(map.object_ref(&()), warning, reason, note.into()).await.expect("publish");
    }

    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let mut list = events.list(&Default::default()).await.expect("list Events").items;
    list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    let summary: Vec<_> = list
        .iter()
        .map(|e| {
            (
                e.type_.clone().unwrap_or_default(),
                e.series.as_ref().map(|s| s.count),
                e.note.clone().unwrap_or_default(),
            )
        })
        .collect();
    let want = |t: &str, count: Option<i32>, note: &str| (t.to_string(), count, note.to_string());
    assert_eq!(
        summary,
        vec![
            want("Warning", Some(3), "no capacity"),
            want("Warning", None, "quota exceeded"),
            want("Normal", None, "launched")
        ],
        "a series of three, another note, another reason"
    );
    let e = &list[0];
    assert_eq!(e.reporting_controller.as_deref(), Some("kpool"));
    assert_eq!(e.reporting_instance.as_deref(), Some("kpool-test-pod"));
    assert_eq!(e.action.as_deref(), Some("LaunchFailed"));
    assert_eq!(e.regarding.as_ref().and_then(|r| r.uid.clone()), map.metadata.uid);
    assert_eq!(publisher.kept(), 3);
    delete_namespace(c, &ns);
}
