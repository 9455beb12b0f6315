//! The corpus: objects users write, wrong ones, and updates that transition rules judge.
//! Every CEL rule of `crds/` has at least one rejecting case here.

use serde_json::{json, Value};

use super::Case;
use super::Expected::{self, Admitted, Rejected};

fn object(kind: &str, spec: Value) -> Value {
    json!({"apiVersion": "kpool.dev/v1alpha1", "kind": kind, "metadata": {"name": "x", "namespace": "ml"}, "spec": spec})
}

pub fn run(spec: Value) -> Value {
    object("Run", spec)
}

pub fn instance(spec: Value) -> Value {
    object("Instance", spec)
}

pub fn pool(spec: Value) -> Value {
    object("Pool", spec)
}

pub fn profile(spec: Value) -> Value {
    object("Profile", spec)
}

pub fn backend(spec: Value) -> Value {
    object("Backend", spec)
}

/// An `aws` backend with everything it needs, `aws` settings merged into it.
fn aws(settings: Value) -> Value {
    let mut aws = json!({"imageId": "ami-0123456789abcdef0"});
    aws.as_object_mut().unwrap().extend(settings.as_object().unwrap().clone());
    backend(json!({"type": "aws", "regions": ["us-east-1"], "credentials": {"secretRef": {"name": "aws"}},
                   "catalog": {"configMapRef": {"name": "offers"}}, "aws": aws}))
}

/// An `ssh` backend with these hosts.
fn ssh(hosts: Value) -> Value {
    backend(json!({"type": "ssh", "credentials": {"secretRef": {"name": "key"}}, "ssh": {"hosts": hosts}}))
}

fn case(name: &'static str, obj: Value, expected: Expected) -> Case {
    Case { name, obj, old: None, expected }
}

fn update(name: &'static str, old: Value, obj: Value, expected: Expected) -> Case {
    Case { name, obj, old: Some(old), expected }
}

const fn rejected(field: &'static str, words: &'static [&'static str]) -> Expected {
    Rejected { field, words }
}

pub fn cases() -> Vec<Case> {
    let mut out = policies();
    out.extend(resources());
    out.extend(backends());
    out.extend(transitions());
    out.extend(server_changes());
    out
}

/// Policy fields (shared by runs, instances, profiles and pool defaults).
fn policies() -> Vec<Case> {
    vec![
        case("run: negative maxPrice", run(json!({"maxPrice": -1.5})), rejected("spec.maxPrice", &["-1.5"])),
        case("run: maxPrice as a string", run(json!({"maxPrice": "2.5"})), rejected("spec.maxPrice", &["number"])),
        case(
            "run: unknown spotPolicy",
            run(json!({"spotPolicy": "sometimes"})),
            rejected("spec.spotPolicy", &["sometimes"]),
        ),
        case(
            "run: idleDuration in words",
            run(json!({"idleDuration": "5 minutes"})),
            rejected("spec.idleDuration", &["5 minutes"]),
        ),
        case(
            "instance: idleDuration auto misspelt",
            instance(json!({"idleDuration": "automatic"})),
            rejected("spec.idleDuration", &["automatic"]),
        ),
        case(
            "run: maxDuration auto (only idleDuration learns)",
            run(json!({"maxDuration": "auto"})),
            rejected("spec.maxDuration", &["auto"]),
        ),
        case(
            "run: maxDuration in words",
            run(json!({"maxDuration": "2 hours"})),
            rejected("spec.maxDuration", &["2 hours"]),
        ),
        case(
            "run: unknown retry event",
            run(json!({"retry": {"onEvents": ["never"]}})),
            rejected("spec.retry.onEvents[0]", &["never"]),
        ),
        case(
            "run: retry duration off",
            run(json!({"retry": {"duration": "off"}})),
            rejected("spec.retry.duration", &["off"]),
        ),
        case(
            "run: unknown creationPolicy",
            run(json!({"creationPolicy": "Always"})),
            rejected("spec.creationPolicy", &["Always"]),
        ),
        case("run: commands as a string", run(json!({"commands": "make"})), rejected("spec.commands", &["array"])),
        case("run: stop as a string", run(json!({"stop": "yes"})), rejected("spec.stop", &["boolean"])),
        case("run: env without a name", run(json!({"env": [{"value": "1"}]})), rejected("spec.env[0].name", &[])),
        // An image must never become an option of `docker run` on ssh hosts.
        case(
            "run: image that is a docker option",
            run(json!({"image": "--privileged"})),
            rejected("spec.image", &["--privileged"]),
        ),
        case("run: image with a mount", run(json!({"image": "-v/:/host"})), rejected("spec.image", &["-v/:/host"])),
        case(
            "run: image with a second word",
            run(json!({"image": "alpine --privileged"})),
            rejected("spec.image", &["alpine --privileged"]),
        ),
        case("run: empty image", run(json!({"image": ""})), rejected("spec.image", &[])),
        case(
            "run: image with a registry, port and digest",
            run(json!({"image": "registry.example:5000/team/img-1@sha256:0123abcd"})),
            Admitted,
        ),
        case(
            "run: no spec",
            json!({"apiVersion": "kpool.dev/v1alpha1", "kind": "Run", "metadata": {"name": "x"}}),
            rejected("spec", &[]),
        ),
        case(
            "instance: unknown terminationPolicy",
            instance(json!({"terminationPolicy": "Never"})),
            rejected("spec.terminationPolicy", &["Never"]),
        ),
        case("pool: negative maxInstances", pool(json!({"maxInstances": -1})), rejected("spec.maxInstances", &["-1"])),
        case(
            "pool: warm headroom",
            pool(json!({"maxInstances": 4, "warm": {"minIdle": 2, "resources": {"gpu": "24GB.."},
                "policy": {"spotPolicy": "on-demand"}}})),
            Admitted,
        ),
        case(
            "pool: budgets",
            pool(json!({"budget": {"maxHourlyPrice": 12.5, "maxSpend": {"dollars": 500, "per": "7d"}}})),
            Admitted,
        ),
        case(
            "pool: budget enforced by terminating",
            pool(json!({"budget": {"maxSpend": {"dollars": 100, "per": "30d"}, "enforce": "terminate"}})),
            Admitted,
        ),
        case(
            "pool: unknown budget enforcement",
            pool(json!({"budget": {"maxHourlyPrice": 3, "enforce": "kill"}})),
            rejected("spec.budget.enforce", &["kill"]),
        ),
        case(
            "profile: namespace-wide budget",
            profile(json!({"budget": {"maxHourlyPrice": 40, "maxSpend": {"dollars": 5000, "per": "30d"},
                "scope": "Namespace"}})),
            Admitted,
        ),
        case(
            "profile: budget that terminates",
            profile(json!({"budget": {"maxHourlyPrice": 40, "enforce": "terminate"}})),
            rejected("spec.budget", &["Pool budgets only"]),
        ),
        case(
            "profile: unknown budget scope",
            profile(json!({"budget": {"maxHourlyPrice": 40, "scope": "Cluster"}})),
            rejected("spec.budget.scope", &["Cluster"]),
        ),
        case(
            "pool: negative hourly budget",
            pool(json!({"budget": {"maxHourlyPrice": -1}})),
            rejected("spec.budget.maxHourlyPrice", &["-1"]),
        ),
        case(
            "pool: spend window in words",
            pool(json!({"budget": {"maxSpend": {"dollars": 10, "per": "a week"}}})),
            rejected("spec.budget.maxSpend.per", &["a week"]),
        ),
        case(
            "pool: negative warm minIdle",
            pool(json!({"warm": {"minIdle": -2}})),
            rejected("spec.warm.minIdle", &["-2"]),
        ),
        case(
            "pool: warm windows",
            pool(json!({"warm": {"minIdle": 1, "windows": [
                {"schedule": "0 8 * * 1-5", "duration": "10h", "minIdle": 4, "timeZone": "Europe/Berlin"},
                {"schedule": "*/30 0-6,22-23 1,15 */2 0,6-7", "duration": "1h30m", "minIdle": 2}]}})),
            Admitted,
        ),
        case(
            "pool: warm window hour out of range",
            pool(json!({"warm": {"windows": [{"schedule": "0 25 * * *", "duration": "1h", "minIdle": 1}]}})),
            rejected("spec.warm.windows[0].schedule", &["0 25 * * *"]),
        ),
        case(
            "pool: warm window with four fields",
            pool(json!({"warm": {"windows": [{"schedule": "0 8 * 1-5", "duration": "1h", "minIdle": 1}]}})),
            rejected("spec.warm.windows[0].schedule", &["0 8 * 1-5"]),
        ),
        case(
            "pool: warm window with a day name",
            pool(json!({"warm": {"windows": [{"schedule": "0 8 * * MON", "duration": "1h", "minIdle": 1}]}})),
            rejected("spec.warm.windows[0].schedule", &["0 8 * * MON"]),
        ),
        case(
            "pool: warm window duration in words",
            pool(json!({"warm": {"windows": [{"schedule": "0 8 * * *", "duration": "ten hours", "minIdle": 1}]}})),
            rejected("spec.warm.windows[0].duration", &["ten hours"]),
        ),
        case(
            "pool: warm window without minIdle",
            pool(json!({"warm": {"windows": [{"schedule": "0 8 * * *", "duration": "1h"}]}})),
            rejected("spec.warm.windows[0].minIdle", &[]),
        ),
        case(
            "pool: fractional maxInstances",
            pool(json!({"maxInstances": 1.5})),
            rejected("spec.maxInstances", &["integer"]),
        ),
        case(
            "pool: unknown spotPolicy in defaults",
            pool(json!({"defaults": {"spotPolicy": "never"}})),
            rejected("spec.defaults.spotPolicy", &["never"]),
        ),
        case("profile: negative maxPrice", profile(json!({"maxPrice": -1})), rejected("spec.maxPrice", &["-1"])),
        case(
            "profile: retry duration in words",
            profile(json!({"retry": {"duration": "1 hour"}})),
            rejected("spec.retry.duration", &["1 hour"]),
        ),
        case(
            "run: spot, free, kept",
            run(json!({"spotPolicy": "auto", "maxPrice": 0, "idleDuration": "off"})),
            Admitted,
        ),
        case("profile: idleDuration learned", profile(json!({"idleDuration": "auto"})), Admitted),
        case(
            "run: spot then on-demand with its fallback",
            run(json!({"spotPolicy": "spot-then-on-demand",
                "spotFallback": {"afterInterruptions": 2, "afterWaiting": "15m"}})),
            Admitted,
        ),
        case(
            "run: spot fallback after no interruption",
            run(json!({"spotPolicy": "spot-then-on-demand", "spotFallback": {"afterInterruptions": 0}})),
            rejected("spec.spotFallback.afterInterruptions", &["0"]),
        ),
        case(
            "profile: spot fallback wait in words",
            profile(json!({"spotFallback": {"afterWaiting": "a while"}})),
            rejected("spec.spotFallback.afterWaiting", &["a while"]),
        ),
        case("instance: idleDuration learned", instance(json!({"idleDuration": "auto"})), Admitted),
        case(
            "run: on-demand with durations",
            run(json!({"spotPolicy": "on-demand", "idleDuration": "90s", "maxDuration": "1d"})),
            Admitted,
        ),
        case(
            "run: spot with every retry event",
            run(json!({"spotPolicy": "spot", "idleDuration": "-1",
                       "retry": {"onEvents": ["no-capacity", "interruption", "error"], "duration": "2h"}})),
            Admitted,
        ),
        case(
            "run: reuse only, kept, filtered",
            run(
                json!({"creationPolicy": "Reuse", "terminationPolicy": "DontDestroy", "regions": ["us-east-1"], "backends": ["aws"]}),
            ),
            Admitted,
        ),
        case("pool: zero instances", pool(json!({"maxInstances": 0, "profile": "p"})), Admitted),
    ]
}

/// Resource requirements (their grammar is checked by kpool; the schema only bounds the
/// characters).
fn resources() -> Vec<Case> {
    vec![
        case(
            "run: gpu with a semicolon",
            run(json!({"resources": {"gpu": "A100;2"}})),
            rejected("spec.resources.gpu", &["A100;2"]),
        ),
        case(
            "run: computeCapability without a minor",
            run(json!({"resources": {"computeCapability": "8"}})),
            rejected("spec.resources.computeCapability", &["8"]),
        ),
        case(
            "instance: memory with a slash",
            instance(json!({"resources": {"memory": "64/GB"}})),
            rejected("spec.resources.memory", &["64/GB"]),
        ),
        case(
            "run: every requirement",
            run(json!({"resources": {"cpu": "arm:4..8", "memory": "64GB..", "disk": "1TB..2TB",
                                     "gpu": "A100,H100:80GB:1..2", "gpuTotalMemory": "160GB..", "computeCapability": "8.0"}})),
            Admitted,
        ),
    ]
}

fn backends() -> Vec<Case> {
    let host = |name: &str, host: &str| json!({"name": name, "host": host});
    vec![
        case("backend: unknown type", backend(json!({"type": "gcp"})), rejected("spec.type", &["gcp"])),
        case("backend: no type", backend(json!({"kubernetes": {}})), rejected("spec.type", &[])),
        case("backend: kubernetes, nothing else", backend(json!({"type": "kubernetes"})), Admitted),
        case(
            "backend: kubernetes, negative price",
            backend(json!({"type": "kubernetes", "kubernetes": {"pricePerHour": -1}})),
            rejected("spec.kubernetes.pricePerHour", &["-1"]),
        ),
        case(
            "backend: kubernetes, a node selector value that is not a string",
            backend(json!({"type": "kubernetes", "kubernetes": {"nodeSelector": {"zone": 1}}})),
            rejected("spec.kubernetes.nodeSelector.zone", &["string"]),
        ),
        // CEL on spec: what each type needs.
        case(
            "backend: ssh without credentials",
            backend(json!({"type": "ssh", "ssh": {"hosts": [{"host": "a"}]}})),
            rejected("spec", &["an ssh backend needs"]),
        ),
        case(
            "backend: ssh without hosts",
            backend(json!({"type": "ssh", "credentials": {"secretRef": {"name": "key"}}})),
            rejected("spec", &["an ssh backend needs"]),
        ),
        case(
            "backend: aws without a catalog",
            {
                let mut b = aws(json!({}));
                b["spec"].as_object_mut().unwrap().remove("catalog");
                b
            },
            rejected("spec", &["an aws backend needs"]),
        ),
        case(
            "backend: aws with no regions",
            {
                let mut b = aws(json!({}));
                b["spec"]["regions"] = json!([]);
                b
            },
            rejected("spec", &["an aws backend needs"]),
        ),
        case(
            "backend: lambda without credentials",
            backend(json!({"type": "lambda"})),
            rejected("spec", &["a lambda backend needs"]),
        ),
        case(
            "backend: lambda",
            backend(json!({"type": "lambda", "credentials": {"secretRef": {"name": "lambda"}}})),
            Admitted,
        ),
        case(
            "backend: lambda, empty sshUser",
            backend(
                json!({"type": "lambda", "credentials": {"secretRef": {"name": "lambda"}}, "lambda": {"sshUser": ""}}),
            ),
            rejected("spec.lambda.sshUser", &["\"\""]),
        ),
        // aws settings.
        case("backend: aws, shortest refresh", aws(json!({"spotPriceRefreshSeconds": 60})), Admitted),
        case("backend: aws, a day's refresh", aws(json!({"spotPriceRefreshSeconds": 86400})), Admitted),
        case(
            "backend: aws, refresh too often",
            aws(json!({"spotPriceRefreshSeconds": 30})),
            rejected("spec.aws.spotPriceRefreshSeconds", &["30"]),
        ),
        case(
            "backend: aws, refresh too rarely",
            aws(json!({"spotPriceRefreshSeconds": 86401})),
            rejected("spec.aws.spotPriceRefreshSeconds", &["86401"]),
        ),
        case(
            "backend: aws, not an AMI",
            aws(json!({"imageId": "ami-xyz"})),
            rejected("spec.aws.imageId", &["ami-xyz"]),
        ),
        case(
            "backend: aws, no AMI",
            {
                let mut b = aws(json!({}));
                b["spec"]["aws"] = json!({"sshUser": "ubuntu"});
                b
            },
            rejected("spec.aws.imageId", &[]),
        ),
        case("backend: aws, port 0", aws(json!({"sshPort": 0})), rejected("spec.aws.sshPort", &["0"])),
        case(
            "backend: aws, not a subnet",
            aws(json!({"subnetId": "vpc-1234"})),
            rejected("spec.aws.subnetId", &["vpc-1234"]),
        ),
        // ssh hosts, and CEL on the list: unique names.
        case("backend: ssh, two hosts", ssh(json!([host("a", "10.0.0.1"), host("b", "10.0.0.1")])), Admitted),
        case(
            "backend: ssh, two hosts of one name",
            ssh(json!([host("a", "10.0.0.1"), host("a", "10.0.0.2")])),
            rejected("spec.ssh.hosts", &["host names must be unique"]),
        ),
        case(
            "backend: ssh, a host named like another's address",
            ssh(json!([{"host": "gpu"}, host("gpu", "10.0.0.2")])),
            rejected("spec.ssh.hosts", &["host names must be unique"]),
        ),
        case("backend: ssh, no hosts", ssh(json!([])), rejected("spec.ssh.hosts", &["1 item"])),
        case(
            "backend: ssh, 129 hosts",
            ssh(Value::Array((0..129).map(|i| json!({"host": format!("h{i}")})).collect())),
            rejected("spec.ssh.hosts", &["128"]),
        ),
        case(
            "backend: ssh, a host name too long",
            ssh(json!([host(&"h".repeat(254), "10.0.0.1")])),
            rejected("spec.ssh.hosts[0].name", &["253"]),
        ),
        case(
            "backend: ssh, port too high",
            ssh(json!([{"host": "a", "port": 70000}])),
            rejected("spec.ssh.hosts[0].port", &["70000"]),
        ),
        case(
            "backend: ssh, a host without its address",
            ssh(json!([{"name": "a"}])),
            rejected("spec.ssh.hosts[0].host", &[]),
        ),
        case(
            "backend: ssh, zero timeout",
            {
                let mut b = ssh(json!([{"host": "a"}]));
                b["spec"]["ssh"]["connectTimeoutSeconds"] = json!(0);
                b
            },
            rejected("spec.ssh.connectTimeoutSeconds", &["0"]),
        ),
    ]
}

/// Updates judged by the transition rules (`self == oldSelf`).
fn transitions() -> Vec<Case> {
    let inst = instance(json!({"pool": "training", "resources": {"gpu": "A100:1"}}));
    let job = run(json!({"pool": "training", "resources": {"cpu": "8.."}, "commands": ["make"]}));
    vec![
        update("instance: unchanged", inst.clone(), inst.clone(), Admitted),
        update(
            "instance: a policy changes",
            inst.clone(),
            instance(json!({"pool": "training", "resources": {"gpu": "A100:1"}, "idleDuration": "1h"})),
            Admitted,
        ),
        update(
            "instance: resized",
            inst.clone(),
            instance(json!({"pool": "training", "resources": {"gpu": "H100:1"}})),
            rejected("spec.resources", &["immutable"]),
        ),
        update(
            "instance: moved to another pool",
            inst.clone(),
            instance(json!({"pool": "other", "resources": {"gpu": "A100:1"}})),
            rejected("spec.pool", &["immutable"]),
        ),
        update(
            "run: stopped",
            job.clone(),
            run(json!({"pool": "training", "resources": {"cpu": "8.."}, "commands": ["make"], "stop": true})),
            Admitted,
        ),
        update(
            "run: resized",
            job.clone(),
            run(json!({"pool": "training", "resources": {"cpu": "16.."}, "commands": ["make"]})),
            rejected("spec.resources", &["immutable"]),
        ),
        update(
            "run: moved to another pool",
            job.clone(),
            run(json!({"pool": "other", "resources": {"cpu": "8.."}, "commands": ["make"]})),
            rejected("spec.pool", &["immutable"]),
        ),
        // A transition rule judges a field only when both the old and the new object have it.
        update(
            "run: pool removed",
            job.clone(),
            run(json!({"resources": {"cpu": "8.."}, "commands": ["make"]})),
            Admitted,
        ),
        update(
            "run: pool set where there was none",
            run(json!({"resources": {"cpu": "8.."}})),
            run(json!({"pool": "training", "resources": {"cpu": "8.."}})),
            Admitted,
        ),
    ]
}

/// Bodies the server changes before it validates them: unknown fields, `null`s, defaults,
/// status written through the main resource.
fn server_changes() -> Vec<Case> {
    vec![
        case("run: an unknown field", run(json!({"commands": ["make"], "gpus": 8})), Admitted),
        case("run: null in a nullable field", run(json!({"maxPrice": null, "pool": null})), Admitted),
        case("run: null in a field that is not nullable", run(json!({"commands": null, "stop": null})), Admitted),
        case(
            "run: an invalid status on create",
            {
                let mut r = run(json!({"commands": ["make"]}));
                r["status"] = json!({"phase": "Bogus", "attempts": -1});
                r
            },
            Admitted,
        ),
        case("backend: aws, null refresh", aws(json!({"spotPriceRefreshSeconds": null})), Admitted),
        // A wrong type blocks the CEL rules: only the type error is reported.
        case(
            "backend: ssh, a wrong type next to duplicate hosts",
            {
                let mut b = ssh(json!([{"host": "a"}, {"host": "a"}]));
                b["spec"]["ssh"]["connectTimeoutSeconds"] = json!("ten");
                b
            },
            rejected("spec.ssh.connectTimeoutSeconds", &["integer"]),
        ),
        case(
            "backend: ssh, null hosts",
            {
                let mut b = ssh(json!(null));
                b["spec"]["ssh"] = json!(null);
                b
            },
            rejected("spec", &["an ssh backend needs"]),
        ),
        // The server defaults `resources` to `{}` before the transition rule compares.
        update(
            "instance: resources dropped on update",
            instance(json!({"resources": {"gpu": "A100:1"}})),
            instance(json!({})),
            rejected("spec.resources", &["immutable"]),
        ),
        update(
            "run: resources added on update",
            run(json!({"commands": ["make"]})),
            run(json!({"commands": ["make"], "resources": {"cpu": "8.."}})),
            rejected("spec.resources", &["immutable"]),
        ),
        update(
            "instance: pool set to null",
            instance(json!({"pool": "training"})),
            instance(json!({"pool": null})),
            Admitted,
        ),
    ]
}
