//! SPDK's RBD methods: `bdev_rbd_register_cluster`, `bdev_rbd_unregister_cluster`,
//! `bdev_rbd_get_clusters_info`, `bdev_rbd_create`, `bdev_rbd_delete`, `bdev_rbd_resize`, with
//! the parameters SPDK's rpc.py 26.9 sends, what `bdev_get_bdevs` shows of an RBD bdev, and the
//! entries `save_config` writes for them.
//!
//! spinblk's additions: `config_file` and `op_timeout` (seconds, `rados_osd_op_timeout`) in
//! `bdev_rbd_create`, `op_timeout` in `bdev_rbd_register_cluster`, and `config_param` accepted
//! as another name for `bdev_rbd_create`'s `config`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use spinblk_target::{
    BdevEntry, BdevKind, BdevParams, RbdClusterParams, RbdClusterRef, RbdSpec, Target, TargetError,
};

use super::{decode, parse_uuid, target_error, SpdkMethods};
use crate::jsonrpc::RpcError;

/// The RBD methods, in the order rpc_get_methods lists them.
pub(super) const RBD_METHODS: [&str; 6] = [
    "bdev_rbd_register_cluster",
    "bdev_rbd_unregister_cluster",
    "bdev_rbd_get_clusters_info",
    "bdev_rbd_create",
    "bdev_rbd_delete",
    "bdev_rbd_resize",
];

/// A Ceph option value: SPDK takes the JSON value's text (strings, numbers, booleans).
#[derive(Deserialize)]
#[serde(untagged)]
enum OptionValue {
    Text(String),
    Number(serde_json::Number),
    Bool(bool),
}

impl OptionValue {
    fn text(self) -> String {
        match self {
            OptionValue::Text(s) => s,
            OptionValue::Number(n) => n.to_string(),
            OptionValue::Bool(b) => b.to_string(),
        }
    }
}

/// A JSON object of Ceph options (or null), in the order given.
type Options = Option<serde_json::Map<String, Value>>;

fn options(what: &str, o: Options) -> Result<Vec<(String, String)>, RpcError> {
    o.into_iter()
        .flatten()
        .map(|(k, v)| {
            let v: OptionValue = serde_json::from_value(v).map_err(|_| {
                RpcError::invalid_params(format!("{what}: the value of {k} is not a string"))
            })?;
            Ok((k, v.text()))
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterCluster {
    name: String,
    user_id: Option<String>,
    config_param: Options,
    config_file: Option<String>,
    key_file: Option<String>,
    core_mask: Option<String>,
    /// spinblk: `rados_osd_op_timeout` in seconds.
    op_timeout: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterName {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RbdCreate {
    name: Option<String>,
    user_id: Option<String>,
    pool_name: String,
    rbd_name: String,
    block_size: u32,
    config: Options,
    /// spinblk: the same as `config`.
    config_param: Options,
    /// spinblk: a ceph.conf to read (default: librados' search).
    config_file: Option<String>,
    /// spinblk: `rados_osd_op_timeout` in seconds.
    op_timeout: Option<u64>,
    cluster_name: Option<String>,
    uuid: Option<String>,
    read_only: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RbdResize {
    name: String,
    /// MiB.
    new_size: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ByName {
    name: String,
}

fn config_object(pairs: &[(String, String)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<_, _>>(),
    )
}

/// A registered cluster as SPDK's bdev_rbd_get_clusters_info and bdev_rbd_register_cluster
/// spell it (`name_key`: "cluster_name" or "name").
fn cluster_json(name_key: &str, name: &str, p: &RbdClusterParams) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(name_key.into(), json!(name));
    if let Some(u) = &p.user_id {
        m.insert("user_id".into(), json!(u));
    }
    if !p.config_param.is_empty() {
        m.insert("config_param".into(), config_object(&p.config_param));
    }
    if let Some(f) = &p.config_file {
        m.insert("config_file".into(), json!(f.display().to_string()));
    }
    if let Some(k) = &p.key_file {
        m.insert("key_file".into(), json!(k.display().to_string()));
    }
    if let Some(c) = &p.core_mask {
        m.insert("core_mask".into(), json!(c));
    }
    m
}

/// `bdev_get_bdevs`' `driver_specific.rbd` of an RBD bdev, SPDK's keys (the cluster's
/// registration, or the bdev's own user and config), and spinblk's additions.
pub(super) fn driver_specific(target: &Target, e: &BdevEntry, spec: &RbdSpec) -> (Value, Value) {
    let mut rbd = Map::new();
    rbd.insert("pool_name".into(), json!(spec.pool));
    rbd.insert("rbd_name".into(), json!(spec.image));
    match &spec.cluster {
        RbdClusterRef::Registered(name) => {
            if let Some(c) = target.rbd_clusters().iter().find(|c| c.name() == name) {
                rbd.extend(cluster_json("cluster_name", name, c.params()));
            }
        }
        RbdClusterRef::Direct(p) => {
            if let Some(u) = &p.user_id {
                rbd.insert("user_id".into(), json!(u));
            }
            if !p.config_param.is_empty() {
                rbd.insert("config".into(), config_object(&p.config_param));
            }
        }
    }
    let image = target.rbd_image(e.name());
    let extra = json!({
        "client_id": image.as_ref().map(|i| i.cluster().instance_id()),
        "op_timeout_s": image.as_ref().map(|i| i.cluster().op_timeout().as_secs_f64()),
        "read_only": spec.read_only,
    });
    (Value::Object(rbd), extra)
}

/// `save_config`'s entries for the registered clusters (before any bdev).
pub(super) fn cluster_config(target: &Target) -> Vec<Value> {
    target
        .rbd_clusters()
        .iter()
        .map(|c| {
            let mut p = cluster_json("name", c.name(), c.params());
            if let Some(t) = c.params().op_timeout {
                p.insert("op_timeout".into(), json!(t));
            }
            json!({ "method": "bdev_rbd_register_cluster", "params": p })
        })
        .collect()
}

/// `save_config`'s `bdev_rbd_create` for one RBD bdev.
pub(super) fn create_config(e: &BdevEntry, spec: &RbdSpec) -> (&'static str, Value) {
    let mut p = json!({
        "name": e.name(),
        "pool_name": spec.pool,
        "rbd_name": spec.image,
        "block_size": spec.block_size,
        "uuid": e.uuid().to_string(),
    });
    if spec.read_only {
        p["read_only"] = json!(true);
    }
    match &spec.cluster {
        RbdClusterRef::Registered(name) => p["cluster_name"] = json!(name),
        RbdClusterRef::Direct(c) => {
            if let Some(u) = &c.user_id {
                p["user_id"] = json!(u);
            }
            if !c.config_param.is_empty() {
                p["config"] = config_object(&c.config_param);
            }
            if let Some(f) = &c.config_file {
                p["config_file"] = json!(f.display().to_string());
            }
            if let Some(t) = c.op_timeout {
                p["op_timeout"] = json!(t);
            }
        }
    }
    ("bdev_rbd_create", p)
}

impl SpdkMethods {
    /// Runs one of [`RBD_METHODS`].
    pub(super) fn rbd_call(&self, method: &str, params: Option<&Value>) -> Result<Value, RpcError> {
        match method {
            "bdev_rbd_register_cluster" => {
                let p: RegisterCluster = decode(method, params)?;
                let params = RbdClusterParams {
                    user_id: p.user_id,
                    config_file: p.config_file.map(PathBuf::from),
                    config_param: options(method, p.config_param)?,
                    key_file: p.key_file.map(PathBuf::from),
                    core_mask: p.core_mask,
                    op_timeout: p.op_timeout,
                };
                let c = self
                    .target
                    .register_rbd_cluster(&p.name, params)
                    .map_err(target_error)?;
                Ok(json!(c.name()))
            }
            "bdev_rbd_unregister_cluster" => {
                let p: ByName = decode(method, params)?;
                self.target
                    .unregister_rbd_cluster(&p.name)
                    .map_err(target_error)?;
                Ok(Value::Bool(true))
            }
            "bdev_rbd_get_clusters_info" => {
                let p: ClusterName = decode(method, params)?;
                let clusters = self.target.rbd_clusters();
                let info = |c: &spinblk_target::RbdClusterEntry| {
                    let mut m = cluster_json("cluster_name", c.name(), c.params());
                    let conn = c.connection();
                    m.insert(
                        "spinblk".into(),
                        json!({
                            "client_id": conn.instance_id(),
                            "op_timeout_s": conn.op_timeout().as_secs_f64(),
                            "images": conn.ref_count().saturating_sub(1),
                        }),
                    );
                    Value::Object(m)
                };
                // SPDK: ENOENT when none is registered, or the one asked for is not.
                let not_found = |what: &str| RpcError::new(-libc::ENOENT, what.to_string());
                if clusters.is_empty() {
                    return Err(not_found("no rbd cluster is registered"));
                }
                match p.name {
                    Some(n) => clusters
                        .iter()
                        .find(|c| c.name() == n)
                        .map(|c| info(c))
                        .ok_or_else(|| not_found(&format!("no rbd cluster named '{n}'"))),
                    None => Ok(Value::Array(clusters.iter().map(|c| info(c)).collect())),
                }
            }
            "bdev_rbd_create" => self.rbd_create(params),
            "bdev_rbd_delete" => self.delete_bdev(method, params, "rbd"),
            "bdev_rbd_resize" => {
                let p: RbdResize = decode(method, params)?;
                let bytes = p
                    .new_size
                    .checked_mul(1 << 20)
                    .ok_or_else(|| RpcError::invalid_params("new_size is too large"))?;
                let is_rbd = self.bdev(&p.name)?.kind().module().eq("rbd");
                if !is_rbd {
                    return Err(target_error(TargetError::NotFound {
                        what: "rbd bdev",
                        name: p.name,
                    }));
                }
                self.target
                    .resize_rbd_bdev(&p.name, bytes)
                    .map_err(target_error)?;
                Ok(Value::Bool(true))
            }
            _ => Err(RpcError::method_not_found()),
        }
    }

    fn rbd_create(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let method = "bdev_rbd_create";
        let p: RbdCreate = decode(method, params)?;
        if p.block_size != 512 && p.block_size != 4096 {
            return Err(RpcError::invalid_params(format!(
                "block_size {} is not supported (512 or 4096)",
                p.block_size
            )));
        }
        if p.config.is_some() && p.config_param.is_some() {
            return Err(RpcError::invalid_params(
                "config and config_param are the same parameter: give one",
            ));
        }
        let mut config_param = options(method, p.config)?;
        config_param.extend(options(method, p.config_param)?);
        let cluster = match p.cluster_name {
            Some(c) => {
                if p.user_id.is_some() || !config_param.is_empty() || p.config_file.is_some() {
                    log::warn!(
                        "{method}: cluster_name '{c}' given: user_id, config and config_file are \
                         ignored (the cluster's registration has them)"
                    );
                }
                RbdClusterRef::Registered(c)
            }
            None => RbdClusterRef::Direct(RbdClusterParams {
                user_id: p.user_id,
                config_file: p.config_file.map(PathBuf::from),
                config_param,
                key_file: None,
                core_mask: None,
                op_timeout: p.op_timeout,
            }),
        };
        let name = match p.name {
            Some(n) => n,
            None => loop {
                let n = format!("Ceph{}", self.next_rbd.fetch_add(1, Ordering::Relaxed));
                if self.target.bdevs().get(&n).is_none() {
                    break n;
                }
            },
        };
        let mut bp = BdevParams::new(
            name,
            BdevKind::Rbd(RbdSpec {
                pool: p.pool_name,
                image: p.rbd_name,
                block_size: p.block_size,
                read_only: p.read_only.unwrap_or(false),
                cluster,
            }),
        );
        bp.uuid = parse_uuid(p.uuid.as_deref())?;
        self.create_bdev(bp)
    }
}
