//! SPDK's JSON configuration format (`--json FILE`, and what `save_config` writes):
//! `{"subsystems":[{"subsystem":"bdev","config":[{"method":..,"params":{..}},..]},..]}`. Each
//! entry is run through the same methods as an RPC call. Entries SPDK writes for modules
//! spinblk does not have but that create nothing (`*_set_options`, `framework_set_scheduler`,
//! ...) are skipped with a log line; any other unknown method is an error.

use log::info;
use serde_json::Value;

use crate::jsonrpc::Handler;
use crate::methods::{SpdkMethods, METHODS};

/// Whether `method`, unknown to spinblk, only tunes a module SPDK has and creates nothing.
fn ignorable(method: &str) -> bool {
    method.ends_with("_set_options")
        || method.ends_with("_set_opts")
        || method.ends_with("_set_config")
        || matches!(
            method,
            "framework_set_scheduler"
                | "bdev_nvme_set_hotplug"
                | "sock_set_default_impl"
                | "iobuf_set_options"
                | "accel_assign_opc"
                | "accel_set_driver"
                | "vmd_enable"
                | "bdev_set_qd_sampling_period"
                | "scsi_set_options"
        )
}

/// Runs every entry of an SPDK configuration document against `methods`.
pub fn load(methods: &SpdkMethods, doc: &Value) -> Result<(), String> {
    let subsystems = doc
        .get("subsystems")
        .and_then(Value::as_array)
        .ok_or("an SPDK configuration has a \"subsystems\" array")?;
    for sub in subsystems {
        let name = sub
            .get("subsystem")
            .and_then(Value::as_str)
            .ok_or("each subsystem has a \"subsystem\" name")?;
        let entries: Vec<&Value> = match sub.get("config") {
            None | Some(Value::Null) => continue,
            Some(Value::Array(a)) => a
                .iter()
                .flat_map(|e| match e {
                    // A batch (save_config with_batches) is a list of calls.
                    Value::Array(batch) => batch.iter().collect::<Vec<_>>(),
                    other => vec![other],
                })
                .collect(),
            Some(_) => return Err(format!("subsystem {name}: \"config\" is not an array")),
        };
        for e in entries {
            let method = e
                .get("method")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("subsystem {name}: an entry has no \"method\""))?;
            if !METHODS.contains(&method) {
                if ignorable(method) {
                    info!("config: {name}: {method} has no effect in spinblk; skipped");
                    continue;
                }
                return Err(format!(
                    "subsystem {name}: method {method} is not supported by spinblk"
                ));
            }
            let params = match e.get("params") {
                None | Some(Value::Null) => None,
                Some(p) => Some(p),
            };
            methods
                .call(method, params)
                .map_err(|err| format!("subsystem {name}: {method}: {}", err.message))?;
        }
    }
    Ok(())
}
