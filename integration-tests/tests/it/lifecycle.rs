//! Using the API before `init`, and bad configurations.

use rayforge::{Config, Error};

#[rayforge::remote]
fn one() -> i32 {
    1
}

#[test]
fn api_before_init_and_bad_config_give_clear_errors() {
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
    assert!(matches!(rayforge::init(Config::default()), Err(Error::Runtime(_))));
    assert_eq!(one::remote().get().unwrap(), 1);
    let res = rayforge::node_resources().unwrap();
    assert_eq!(res.total.get("CPU"), Some(&1.0));
    rayforge::shutdown();
    assert!(!rayforge::is_initialized());
    assert!(rayforge::put(1u8).is_err());
}
