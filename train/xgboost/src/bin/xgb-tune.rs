//! Tune's command line with distributed XGBoost registered as the
//! trainable `xgboost` (see `rayforge_xgboost::tune`):
//!
//! ```sh
//! xgb-tune run xgb.toml        # [trainable] name = "xgboost"
//! ```

#[rayforge::main]
fn main() -> std::process::ExitCode {
    rayforge_tune::cli::Cli::new("xgb-tune")
        .register("xgboost", rayforge_xgboost::tune::trainable)
        .main()
}
