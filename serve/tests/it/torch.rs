//! A TorchScript model served through tch (feature `torch`, which the
//! workspace's test run enables; libtorch from scripts/libtorch.sh).
#![cfg(feature = "torch")]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rayforge_serve::client::request;
use rayforge_serve::torch::TorchScript;
use rayforge_serve::{deployment, Application, Error, HttpOptions};
use tch::{nn, Tensor};

/// Saves relu(x W^T + b), with these weights, as TorchScript (traced by
/// libtorch's JIT, as a Train checkpoint's model is).
pub(crate) fn make_model(path: &Path) {
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let mut l = nn::linear(vs.root() / "l", 3, 2, Default::default());
    tch::no_grad(|| {
        l.ws.copy_(&Tensor::from_slice(&[1.0f32, 2.0, 3.0, 0.5, -1.0, 0.0]).reshape([2, 3]));
        if let Some(b) = l.bs.as_mut() {
            b.copy_(&Tensor::from_slice(&[0.25f32, -0.5]));
        }
    });
    vs.freeze();
    let m = tch::CModule::create_by_tracing(
        "M",
        "forward",
        &[Tensor::zeros([1, 3], (tch::Kind::Float, tch::Device::Cpu))],
        &mut |xs: &[Tensor]| vec![xs[0].apply(&l).relu()],
    )
    .unwrap();
    m.save(path).unwrap();
}

/// The same model as a plain loop.
pub(crate) fn reference(x: &[f32]) -> Vec<f32> {
    let w = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]];
    let b = [0.25, -0.5];
    (0..2)
        .map(|o| (w[o].iter().zip(x).map(|(w, x)| w * x).sum::<f32>() + b[o]).max(0.0))
        .collect()
}

#[test]
fn a_torchscript_model_answers_batched_requests() {
    rayforge_integration_tests::own_process!();
    let dir = std::env::temp_dir().join(format!("serve-torch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("model.pt");
    make_model(&model);

    rayforge_integration_tests::cluster();
    let app = Application::new("m").ingress(deployment::<TorchScript>("Model").user_config(serde_json::json!({
        "model_path": model.to_str().unwrap(),
        "device": "cpu",
        "max_batch_size": 8,
        "batch_wait_ms": 50,
    })));
    let s = Arc::new(
        rayforge_serve::start(
            vec![app],
            HttpOptions {
                port: 0,
                admin_port: 0,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    s.wait_healthy(Duration::from_secs(120)).unwrap();
    let addr = s.http_addr().to_string();
    let threads: Vec<_> = (0..12)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let x = vec![i as f32, 1.0 - i as f32 * 0.5, 0.25 * i as f32];
                let body = serde_json::to_vec(&x).unwrap();
                let r = request(&addr, "POST", "/", &body, Duration::from_secs(60)).unwrap();
                assert_eq!(r.status, 200, "{}", r.text());
                (x, serde_json::from_slice::<Vec<f32>>(&r.body).unwrap())
            })
        })
        .collect();
    for t in threads {
        let (x, y) = t.join().unwrap();
        let want = reference(&x);
        assert!(
            y.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-4),
            "{x:?}: {y:?} vs {want:?}"
        );
    }
    // A row the model cannot take fails with torch's reason, alone: a good
    // row sent with it still gets its answer.
    let bad = std::thread::spawn({
        let addr = addr.clone();
        move || request(&addr, "POST", "/", b"[1.0, 2.0]", Duration::from_secs(60)).unwrap()
    });
    let good = request(&addr, "POST", "/", b"[1.0, 2.0, 3.0]", Duration::from_secs(60)).unwrap();
    let bad = bad.join().unwrap();
    assert_eq!(bad.status, 500, "{}", bad.text());
    assert!(bad.text().contains("forward"), "{}", bad.text());
    assert_eq!(
        serde_json::from_slice::<Vec<f32>>(&good.body).unwrap(),
        reference(&[1.0, 2.0, 3.0])
    );
    let s = Arc::try_unwrap(s).ok().unwrap();
    // A missing model file: the replica cannot start and says why.
    s.deploy(vec![
        Application::new("m").ingress(
            deployment::<TorchScript>("Model")
                .user_config(serde_json::json!({ "model_path": model.to_str().unwrap(), "device": "cpu" })),
        ),
        Application::new("broken").route_prefix("/broken").ingress(
            deployment::<TorchScript>("Broken")
                .user_config(serde_json::json!({ "model_path": "/nonexistent/model.pt" })),
        ),
    ])
    .unwrap();
    let e = s.wait_healthy(Duration::from_secs(120));
    assert!(
        matches!(&e, Err(Error::Unavailable(m)) if m.contains("/nonexistent/model.pt")),
        "{e:?}"
    );
    s.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A model committed as a checkpoint to the cluster's store (as a Train run
/// on another node commits it) is found by its URI: the replica downloads
/// it to its node. A checkpoint that does not exist fails the deployment,
/// naming it.
#[test]
fn a_replica_loads_its_model_from_a_checkpoint_in_storage() {
    rayforge_integration_tests::own_process!();
    rayforge_integration_tests::cluster();
    let uri = commit_model_to_store("cluster://serve-test/run");
    let app = Application::new("m").ingress(
        deployment::<TorchScript>("Model").user_config(serde_json::json!({ "checkpoint": uri, "device": "cpu" })),
    );
    let s = serve_and_check_model(app);
    // A checkpoint that is not there: the replica cannot start, naming it.
    let missing = "cluster://serve-test/run/checkpoint_000009";
    s.deploy(vec![Application::new("broken").route_prefix("/broken").ingress(
        deployment::<TorchScript>("Broken").user_config(serde_json::json!({ "checkpoint": missing, "device": "cpu" })),
    )])
    .unwrap();
    let e = s.wait_healthy(Duration::from_secs(120));
    assert!(matches!(&e, Err(Error::Unavailable(m)) if m.contains(missing)), "{e:?}");
    s.shutdown().unwrap();
}

/// Starts Serve with `app` (a model made by [`make_model`] at `/`), waits
/// until it is healthy and checks that `[1, 2, 3]` posted through the
/// proxy comes back as [`reference`] says.
pub(crate) fn serve_and_check_model(app: Application) -> rayforge_serve::Serve {
    let s = rayforge_serve::start(
        vec![app],
        HttpOptions {
            port: 0,
            admin_port: 0,
            ..Default::default()
        },
    )
    .unwrap();
    s.wait_healthy(Duration::from_secs(180)).unwrap();
    let r = request(
        &s.http_addr().to_string(),
        "POST",
        "/",
        b"[1.0, 2.0, 3.0]",
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let y: Vec<f32> = serde_json::from_slice(&r.body).unwrap();
    let want = reference(&[1.0, 2.0, 3.0]);
    assert!(
        y.len() == want.len() && y.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-4),
        "{y:?} vs {want:?}"
    );
    s
}

/// Commits a model made by [`make_model`] as checkpoint 1 under `run` (a
/// `cluster://` URI) and removes this node's copy, so that only the store
/// holds it; its URI.
pub(crate) fn commit_model_to_store(run: &str) -> String {
    let w = rayforge::checkpoint::CheckpointWriter::new().unwrap();
    make_model(&w.file_path("model.pt").unwrap());
    let run = rayforge::storage::StorageUri::from(run).open().unwrap();
    let c = rayforge::checkpoint::CheckpointDir::new(run)
        .commit(w, 1, &Default::default(), "test")
        .unwrap();
    let uri = c.uri().expect("a checkpoint in the cluster store").to_string();
    std::fs::remove_dir_all(c.path()).unwrap();
    uri
}
