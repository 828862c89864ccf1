//! Using the API before `init`, bad configurations, and `init` from async
//! code.

use rayforge::{Config, Error};

#[rayforge::remote]
fn one() -> i32 {
    1
}

#[test]
fn api_before_init_and_bad_config_give_clear_errors() {
    rayforge_integration_tests::own_process!();
    let err = rayforge::put(1u8).unwrap_err();
    assert!(err.to_string().contains("rayforge::init"), "{err}");
    let err = one::remote().get().unwrap_err();
    assert!(matches!(err, Error::Runtime(_)), "{err}");
    let err = rayforge::init(Config::default().num_cpus(-2.0)).unwrap_err();
    assert!(err.to_string().contains("num_cpus"), "{err}");
    let err = rayforge::init(Config::default().object_store_memory(0)).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let err = rayforge::init(Config::default().max_tasks_in_flight_per_worker(0)).unwrap_err();
    assert!(err.to_string().contains("max_tasks_in_flight_per_worker"), "{err}");

    rayforge::init(Config::default().num_cpus(1.0)).unwrap();
    let again = rayforge::init(Config::default()).unwrap_err();
    assert!(
        matches!(again, Error::Runtime(_)) && again.to_string().contains("reinit_ok"),
        "{again}"
    );
    // As Ray's ignore_reinit_error: a second init keeps the first's cluster.
    rayforge::init(Config::default().num_cpus(2.0).reinit_ok()).unwrap();
    assert_eq!(one::remote().get().unwrap(), 1);
    let res = rayforge::node_resources().unwrap();
    assert_eq!(res.total.get("CPU"), Some(&1.0), "the first init's cluster");
    rayforge::shutdown();
    assert!(!rayforge::is_initialized());
    assert!(rayforge::put(1u8).is_err());
}

/// What a program with `#[tokio::main]` does: init, tasks awaited and got,
/// the async forms of the API, shutdown — all from inside the runtime.
async fn use_rayforge_from_async_code() {
    rayforge::init(Config::default().num_cpus(1.0)).unwrap();
    assert_eq!(one::remote().await.unwrap(), 1);
    assert_eq!(one::remote().get().unwrap(), 1, "a blocking get inside async code");
    let ctx = rayforge::runtime_context_async().await.unwrap();
    assert!(ctx.is_driver && ctx.task_id.is_none());
    assert_eq!(rayforge::node_id_async().await.unwrap(), ctx.node_id);
    assert!(rayforge::kv::put_async("t", "k", b"v", false).await.unwrap());
    assert_eq!(rayforge::kv::get_async("t", "k").await.unwrap(), Some(b"v".to_vec()));
    rayforge::shutdown();
    assert!(!rayforge::is_initialized());
}

#[tokio::test]
async fn init_and_shutdown_work_inside_a_current_thread_runtime() {
    rayforge_integration_tests::own_process!();
    use_rayforge_from_async_code().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_and_shutdown_work_inside_a_multi_thread_runtime() {
    rayforge_integration_tests::own_process!();
    use_rayforge_from_async_code().await;
}
