//! `serve`: runs applications declared in a `serve.toml` from the
//! deployments built into this binary (the benchmark's and the demo's):
//!
//! - `Noop`: answers `ok`.
//! - `Batched`: doubles 1 through a [`Batcher`] (batches of up to 32
//!   gathered for 5 ms) and answers the result.
//! - `Stage`: adds 1 to a number (a pipeline stage, reached by handles).
//! - `Pipeline`: sends 0 through the stages named in its user config
//!   (`{"stages": ["A", "B", "C"]}`) one after another and answers the result.
//! - `Echo`: answers a JSON description of the request.
//! - `Sleep`: sleeps the milliseconds its body names (saying so on its
//!   output), then answers `slept N`.
//! - `TorchScript` (feature `torch`): a TorchScript model, see
//!   `rayforge_serve::torch`.
//!
//! A program with its own deployments calls `rayforge_serve::cli::main`
//! with its own registry.

use std::process::ExitCode;
use std::time::Duration;

use rayforge_serve::{Batcher, Context, Deployment, DeploymentHandle, HttpRequest, Json, Registry, Result};
use serde::Deserialize;

/// Answers `ok`.
struct Noop;

impl Deployment for Noop {
    type Config = ();
    type Request = ();
    type Response = String;
    fn new(_: &Context, _: ()) -> Result<Self> {
        Ok(Noop)
    }
    async fn handle(&self, _: ()) -> Result<String> {
        Ok("ok".into())
    }
}

/// Doubles through a batcher.
struct Batched {
    batcher: Batcher<i64, i64>,
}

impl Deployment for Batched {
    type Config = ();
    type Request = ();
    type Response = String;
    fn new(_: &Context, _: ()) -> Result<Self> {
        Ok(Batched {
            batcher: Batcher::new(32, Duration::from_millis(5)),
        })
    }
    async fn handle(&self, _: ()) -> Result<String> {
        let x = self
            .batcher
            .call(
                1,
                |xs: Vec<i64>| async move { Ok(xs.into_iter().map(|x| x * 2).collect()) },
            )
            .await?;
        Ok(x.to_string())
    }
}

/// Adds one.
struct Stage;

impl Deployment for Stage {
    type Config = ();
    type Request = i64;
    type Response = i64;
    fn new(_: &Context, _: ()) -> Result<Self> {
        Ok(Stage)
    }
    async fn handle(&self, x: i64) -> Result<i64> {
        Ok(x + 1)
    }
}

#[derive(Deserialize)]
struct PipelineConfig {
    stages: Vec<String>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            stages: vec!["StageA".into(), "StageB".into(), "StageC".into()],
        }
    }
}

/// Sends 0 through its stages.
struct Pipeline {
    ctx: Context,
    stages: Vec<DeploymentHandle<Stage>>,
}

impl Deployment for Pipeline {
    type Config = PipelineConfig;
    type Request = ();
    type Response = String;
    fn new(ctx: &Context, c: PipelineConfig) -> Result<Self> {
        Ok(Pipeline {
            ctx: ctx.clone(),
            stages: c.stages.iter().map(|s| ctx.handle::<Stage>(s)).collect(),
        })
    }
    fn reconfigure(&mut self, c: PipelineConfig) -> Result<()> {
        self.stages = c.stages.iter().map(|s| self.ctx.handle::<Stage>(s)).collect();
        Ok(())
    }
    async fn handle(&self, _: ()) -> Result<String> {
        let mut x = 0;
        for s in &self.stages {
            x = s.call(x).await?;
        }
        Ok(x.to_string())
    }
}

/// Describes the request.
struct Echo;

impl Deployment for Echo {
    type Config = ();
    type Request = HttpRequest;
    type Response = Json<serde_json::Value>;
    fn new(_: &Context, _: ()) -> Result<Self> {
        Ok(Echo)
    }
    async fn handle(&self, r: HttpRequest) -> Result<Json<serde_json::Value>> {
        Ok(Json(serde_json::json!({
            "method": r.method,
            "path": r.path,
            "query": r.query,
            "body": String::from_utf8_lossy(&r.body),
        })))
    }
}

/// Sleeps as long as asked.
struct Sleep;

impl Deployment for Sleep {
    type Config = ();
    type Request = u64;
    type Response = String;
    fn new(_: &Context, _: ()) -> Result<Self> {
        Ok(Sleep)
    }
    async fn handle(&self, ms: u64) -> Result<String> {
        println!("sleep: {ms} ms");
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(format!("slept {ms}"))
    }
}

fn main() -> ExitCode {
    let registry = Registry::new()
        .deployment::<Noop>("Noop")
        .deployment::<Batched>("Batched")
        .deployment::<Stage>("Stage")
        .deployment::<Pipeline>("Pipeline")
        .deployment::<Echo>("Echo")
        .deployment::<Sleep>("Sleep");
    #[cfg(feature = "torch")]
    let registry = registry.deployment::<rayforge_serve::torch::TorchScript>("TorchScript");
    rayforge_serve::cli::main(registry)
}
