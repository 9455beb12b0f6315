//! Warm headroom, a pool budget, the queue's positions and the pool's cost on the real
//! control plane (scripts/peers/kube.sh): the `kpool` process reconciles through the real
//! API server (watches, Server-Side Apply status writes with resourceVersion
//! preconditions), and the kubernetes backend's slot and job Pods are placed by the real
//! scheduler on kwok nodes. The rules themselves are tested against the in-memory API
//! (tests/warm.rs, tests/budget.rs, tests/reconcile.rs, tests/pool_cost.rs); this shows
//! they hold where the API server decides what is written.

mod support_kube;

use k8s_openapi::api::core::v1::Pod;
use kpool::api::conditions::find;
use kpool::api::instance::{Instance, InstancePhase};
use kpool::api::pool::Pool;
use kpool::api::run::{Run, RunPhase};
use kube::api::Api;
use kube::ResourceExt;
use support_kube::{apply, cluster, eventually, exit_job, job_pod, run_in_phase, Kpool, WAIT};

const RESOURCES: &str = "{cpu: \"1..\", memory: \"1GB..\", disk: \"1GB..\"}";

fn run_yaml(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: kpool.dev/v1alpha1\nkind: Run\nmetadata: {{name: {name}}}\nspec:\n  image: busybox:1.36\n  \
         commands: [\"sleep 600\"]\n  resources: {RESOURCES}\n{extra}"
    )
}

/// The position and the `Queued` condition's status and reason of run `name`.
async fn queued(runs: &Api<Run>, name: &str) -> Option<(u32, String, String)> {
    let st = runs.get_opt(name).await.ok()??.status?;
    let c = find(&st.conditions, "Queued")?;
    Some((st.queue_position?, c.status.clone(), c.reason.clone()))
}

#[tokio::test]
async fn warm_headroom_a_budget_and_queue_positions_hold_on_the_real_api_server() {
    let c = cluster();
    c.install_crds();
    let admin = c.client().await;
    let ns = c.namespace("pool-features").await;
    let _kpool = Kpool::start(&c.kubeconfig, &ns, None);
    // Each slot costs $1/h: the budget leaves room for two machines, not three.
    apply(
        c,
        &ns,
        &format!(
            "apiVersion: kpool.dev/v1alpha1\nkind: Backend\nmetadata: {{name: cluster}}\n\
             spec: {{type: kubernetes, kubernetes: {{pricePerHour: 1.0}}}}\n---\n\
             apiVersion: kpool.dev/v1alpha1\nkind: Pool\nmetadata:\n  name: p\n  \
             annotations: {{kpool.dev/default: \"true\"}}\nspec:\n  defaults: {{idleDuration: 10m}}\n  \
             warm: {{minIdle: 2, resources: {RESOURCES}}}\n  budget: {{maxHourlyPrice: 2.5}}\n"
        ),
    );
    let pools: Api<Pool> = Api::namespaced(admin.clone(), &ns);
    let runs: Api<Run> = Api::namespaced(admin.clone(), &ns);
    let instances: Api<Instance> = Api::namespaced(admin.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);

    // Two warm instances come up, and the pool says so.
    eventually("2 warm instances ready", WAIT, || async {
        let warm = pools.get("p").await.ok()?.status?.warm?;
        (warm.ready == 2 && warm.wanted == 2).then_some(())
    })
    .await;

    // Two runs take them; replacing them would take the pool to $3/h: the replacement
    // waits, BudgetExceeded, with the figures.
    apply(c, &ns, &run_yaml("a", ""));
    apply(c, &ns, &run_yaml("b", ""));
    let a = run_in_phase(&runs, "a", RunPhase::Running).await;
    let b = run_in_phase(&runs, "b", RunPhase::Running).await;
    for r in [&a, &b] {
        let on = r.status.as_ref().and_then(|s| s.instance.clone()).unwrap_or_default();
        assert!(on.starts_with("p-warm-"), "run {} took a warm instance, not {on}", r.name_any());
    }
    let held = eventually("a replacement held by the budget", WAIT, || async {
        let list = instances.list(&Default::default()).await.ok()?;
        list.items.into_iter().find_map(|i| {
            let st = i.status.as_ref()?;
            let c = find(&st.conditions, "Ready")?;
            (st.phase == InstancePhase::Pending && c.reason == "BudgetExceeded").then(|| c.message.clone())
        })
    })
    .await;
    assert!(held.starts_with("pool p's budget.maxHourlyPrice $2.5/h: the live instances cost $2.0000/h"), "{held}");

    // Two runs that only reuse wait in the queue, the urgent one first.
    apply(c, &ns, &run_yaml("c-later", "  creationPolicy: Reuse\n"));
    apply(c, &ns, &run_yaml("d-urgent", "  creationPolicy: Reuse\n  priority: 10\n"));
    for (name, position) in [("d-urgent", 1), ("c-later", 2)] {
        let want = (position, "True".to_string(), "NoIdleInstance".to_string());
        let seen = eventually(&format!("run {name} at position {position}"), WAIT, || async {
            queued(&runs, name).await.filter(|q| *q == want)
        })
        .await;
        assert_eq!(seen, want);
    }

    // a ends: its instance is idle again and goes to the urgent run; the other moves up.
    exit_job(&pods, &job_pod(&pods, &a).await, 0).await;
    let d = run_in_phase(&runs, "d-urgent", RunPhase::Running).await;
    assert_eq!(d.status.as_ref().unwrap().instance, a.status.as_ref().unwrap().instance, "d took a's instance");
    let st = d.status.unwrap();
    assert_eq!(st.queue_position, None, "{st:?}");
    assert_eq!(
        find(&st.conditions, "Queued").map(|c| (c.status.as_str(), c.reason.as_str())),
        Some(("False", "Assigned"))
    );
    eventually("run c-later at position 1", WAIT, || async { queued(&runs, "c-later").await.filter(|q| q.0 == 1) })
        .await;

    // The pool's spend counts its two launched machines and the runs they served.
    let cost = eventually("the pool's cost", WAIT, || async {
        let cost = pools.get("p").await.ok()?.status?.cost?;
        (cost.total.instances == 2 && cost.total.runs == 3).then_some(cost)
    })
    .await;
    assert_eq!(cost.total.reused_runs, 3, "every run found its warm instance up: {cost:?}");

    // A running run deleted with kubectl: it carries no finalizer, so it is gone at once;
    // its instance stops the job and goes to the run still waiting in the queue.
    assert!(b.finalizers().is_empty(), "a run carries no finalizer: {:?}", b.finalizers());
    let b_job = job_pod(&pods, &b).await;
    runs.delete("b", &Default::default()).await.unwrap();
    assert!(runs.get_opt("b").await.unwrap().is_none(), "run b is gone at once");
    let c_later = run_in_phase(&runs, "c-later", RunPhase::Running).await;
    let took = c_later.status.and_then(|s| s.instance);
    assert_eq!(took, b.status.as_ref().and_then(|s| s.instance.clone()), "c-later took b's instance");
    eventually("run b's job Pod gone", WAIT, || async {
        pods.get_opt(&b_job.name_any()).await.ok()?.is_none().then_some(())
    })
    .await;
    let _ = c.kubectl().args(["delete", "namespace", &ns, "--wait=false"]).output();
}
