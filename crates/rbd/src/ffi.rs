//! The few librados/librbd functions this crate calls, declared by hand and resolved with
//! `dlopen` at run time (so a spinblk binary without Ceph's libraries still runs its other bdevs).
//!
//! Every declaration lives in one table ([`ffi_table!`]); the table's test turns each Rust
//! signature into a C function-pointer declaration, initialises it with the real function from
//! `<rbd/librbd.h>` / `<rados/librados.h>` and compiles that with `-Werror`: a wrong argument
//! count, width or pointer level fails the build of the check.

use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

use crate::RbdError;

/// `rados_t`: a cluster handle.
#[repr(transparent)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct RadosT(pub *mut c_void);
/// `rados_ioctx_t`: an I/O context (one pool).
#[repr(transparent)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct RadosIoctxT(pub *mut c_void);
/// `rbd_image_t`: an open image.
#[repr(transparent)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct RbdImageT(pub *mut c_void);
/// `rbd_completion_t`: one asynchronous request's completion.
#[repr(transparent)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct RbdCompletionT(pub *mut c_void);
/// `rbd_callback_t`.
pub(crate) type RbdCallback = Option<unsafe extern "C" fn(RbdCompletionT, *mut c_void)>;
/// `rbd_update_callback_t`.
pub(crate) type RbdUpdateCallback = Option<unsafe extern "C" fn(*mut c_void)>;

impl RadosT {
    pub(crate) fn null() -> Self {
        RadosT(std::ptr::null_mut())
    }
}
impl RadosIoctxT {
    pub(crate) fn null() -> Self {
        RadosIoctxT(std::ptr::null_mut())
    }
}
impl RbdImageT {
    pub(crate) fn null() -> Self {
        RbdImageT(std::ptr::null_mut())
    }
}
impl RbdCompletionT {
    pub(crate) fn null() -> Self {
        RbdCompletionT(std::ptr::null_mut())
    }
}

/// The shared libraries, by the SONAMEs Debian's librados2/librbd1 install.
pub(crate) const LIBRADOS: &str = "librados.so.2";
pub(crate) const LIBRBD: &str = "librbd.so.1";

/// Declares [`Api`] (one function pointer per entry; `optional` entries are `Option`s, probed
/// with `dlsym`), its loader and, for tests, the C declarations of the same signatures.
macro_rules! ffi_table {
    (
        required { $( $rlib:ident fn $rname:ident ( $($rarg:ident : $rty:ty),* ) -> $rret:ty ; )* }
        optional { $( $olib:ident fn $oname:ident ( $($oarg:ident : $oty:ty),* ) -> $oret:ty ; )* }
    ) => {
        /// Function pointers into librados/librbd, resolved once per process.
        pub(crate) struct Api {
            $( pub(crate) $rname: unsafe extern "C" fn($($rty),*) -> $rret, )*
            $( pub(crate) $oname: Option<unsafe extern "C" fn($($oty),*) -> $oret>, )*
            // Never unloaded: librados/librbd start threads and register process-wide state.
            _rados: libloading::Library,
            _rbd: libloading::Library,
        }

        impl Api {
            /// Loads the two libraries by file name (SONAME) and resolves every symbol.
            fn load(rados_name: &str, rbd_name: &str) -> Result<Api, String> {
                // SAFETY: loading Ceph's client libraries runs their initialisers, which only set
                // up library-internal state (no conflicting symbols with this program).
                let rados = unsafe { libloading::Library::new(rados_name) }
                    .map_err(|e| format!("{e}"))?;
                // SAFETY: as above.
                let rbd = unsafe { libloading::Library::new(rbd_name) }
                    .map_err(|e| format!("{e}"))?;
                Ok(Api {
                    $( $rname: {
                        let lib = match stringify!($rlib) { "rados" => &rados, _ => &rbd };
                        // SAFETY: the symbol is the C function of this exact signature (checked
                        // against the headers by `ffi::tests::signatures_match_headers`).
                        let sym = unsafe {
                            lib.get::<unsafe extern "C" fn($($rty),*) -> $rret>(
                                concat!(stringify!($rname), "\0").as_bytes(),
                            )
                        }
                        .map_err(|e| format!("{}: {e}", stringify!($rname)))?;
                        *sym
                    }, )*
                    $( $oname: {
                        let lib = match stringify!($olib) { "rados" => &rados, _ => &rbd };
                        // SAFETY: as for the required symbols.
                        unsafe {
                            lib.get::<unsafe extern "C" fn($($oty),*) -> $oret>(
                                concat!(stringify!($oname), "\0").as_bytes(),
                            )
                        }
                        .ok()
                        .map(|sym| *sym)
                    }, )*
                    _rados: rados,
                    _rbd: rbd,
                })
            }
        }

        /// `(function name, C declaration of a pointer to it)` for every entry.
        #[cfg(test)]
        pub(crate) fn c_declarations() -> Vec<(&'static str, String)> {
            use crate::ffi::tests::CType;
            let mut v = Vec::new();
            $( v.push((stringify!($rname), format!(
                "{} (*const chk_{})({}) = &{};",
                <$rret as CType>::c(), stringify!($rname),
                [$(<$rty as CType>::c()),*].join(", "), stringify!($rname)))); )*
            $( v.push((stringify!($oname), format!(
                "{} (*const chk_{})({}) = &{};",
                <$oret as CType>::c(), stringify!($oname),
                [$(<$oty as CType>::c()),*].join(", "), stringify!($oname)))); )*
            v
        }
    };
}

ffi_table! {
    required {
        rados fn rados_create2(cluster: *mut RadosT, cluster_name: *const c_char,
            name: *const c_char, flags: u64) -> c_int;
        rados fn rados_conf_read_file(cluster: RadosT, path: *const c_char) -> c_int;
        rados fn rados_conf_set(cluster: RadosT, option: *const c_char,
            value: *const c_char) -> c_int;
        rados fn rados_conf_get(cluster: RadosT, option: *const c_char, buf: *mut c_char,
            len: usize) -> c_int;
        rados fn rados_connect(cluster: RadosT) -> c_int;
        rados fn rados_get_instance_id(cluster: RadosT) -> u64;
        rados fn rados_shutdown(cluster: RadosT) -> ();
        rados fn rados_ioctx_create(cluster: RadosT, pool_name: *const c_char,
            ioctx: *mut RadosIoctxT) -> c_int;
        rados fn rados_ioctx_destroy(io: RadosIoctxT) -> ();
        rbd fn rbd_version(major: *mut c_int, minor: *mut c_int, extra: *mut c_int) -> ();
        rbd fn rbd_open(io: RadosIoctxT, name: *const c_char, image: *mut RbdImageT,
            snap_name: *const c_char) -> c_int;
        rbd fn rbd_aio_close(image: RbdImageT, c: RbdCompletionT) -> c_int;
        rbd fn rbd_get_size(image: RbdImageT, size: *mut u64) -> c_int;
        rbd fn rbd_resize(image: RbdImageT, size: u64) -> c_int;
        rbd fn rbd_update_watch(image: RbdImageT, handle: *mut u64, watch_cb: RbdUpdateCallback,
            arg: *mut c_void) -> c_int;
        rbd fn rbd_update_unwatch(image: RbdImageT, handle: u64) -> c_int;
        rbd fn rbd_aio_create_completion(cb_arg: *mut c_void, complete_cb: RbdCallback,
            c: *mut RbdCompletionT) -> c_int;
        rbd fn rbd_aio_get_return_value(c: RbdCompletionT) -> isize;
        rbd fn rbd_aio_release(c: RbdCompletionT) -> ();
        rbd fn rbd_aio_readv(image: RbdImageT, iov: *const libc::iovec, iovcnt: c_int,
            off: u64, c: RbdCompletionT) -> c_int;
        rbd fn rbd_aio_writev(image: RbdImageT, iov: *const libc::iovec, iovcnt: c_int,
            off: u64, c: RbdCompletionT) -> c_int;
        rbd fn rbd_aio_flush(image: RbdImageT, c: RbdCompletionT) -> c_int;
        rbd fn rbd_aio_discard(image: RbdImageT, off: u64, len: u64,
            c: RbdCompletionT) -> c_int;
    }
    optional {
        // librbd 1.15+ (Ceph 15, Octopus).
        rbd fn rbd_aio_write_zeroes(image: RbdImageT, off: u64, len: usize, c: RbdCompletionT,
            zero_flags: c_int, op_flags: c_int) -> c_int;
    }
}

// SAFETY: the struct holds plain function pointers and library handles that are never unloaded;
// the functions themselves are thread-safe per librados/librbd's documentation.
unsafe impl Send for Api {}
// SAFETY: as above: nothing in `Api` is mutated after loading.
unsafe impl Sync for Api {}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

/// librados/librbd, loaded on first use; a one-line error when they are not installed.
pub(crate) fn api() -> Result<&'static Api, RbdError> {
    API.get_or_init(|| Api::load(LIBRADOS, LIBRBD))
        .as_ref()
        .map_err(|e| RbdError::Library(e.clone()))
}

/// The already-loaded API, for code that runs only after [`api`] succeeded (completion
/// callbacks, handles' destructors).
pub(crate) fn loaded() -> &'static Api {
    match API.get() {
        Some(Ok(api)) => api,
        // Unreachable: every handle and completion was made through a loaded `Api`.
        _ => std::process::abort(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;

    /// The C spelling of a Rust FFI type, for the header check.
    pub(crate) trait CType {
        fn c() -> String;
    }
    macro_rules! c_names {
        ($($t:ty => $c:expr),* $(,)?) => { $( impl CType for $t { fn c() -> String { $c.into() } } )* };
    }
    c_names! {
        () => "void", c_void => "void", c_char => "char", c_int => "int",
        u64 => "uint64_t", usize => "size_t", isize => "ssize_t",
        RadosT => "rados_t", RadosIoctxT => "rados_ioctx_t", RbdImageT => "rbd_image_t",
        RbdCompletionT => "rbd_completion_t", libc::iovec => "struct iovec",
    }
    impl<T: CType> CType for *mut T {
        fn c() -> String {
            format!("{} *", T::c())
        }
    }
    impl<T: CType> CType for *const T {
        fn c() -> String {
            format!("const {} *", T::c())
        }
    }
    impl<A: CType> CType for Option<unsafe extern "C" fn(A)> {
        fn c() -> String {
            format!("void (*)({})", A::c())
        }
    }
    impl<A: CType, B: CType> CType for Option<unsafe extern "C" fn(A, B)> {
        fn c() -> String {
            format!("void (*)({}, {})", A::c(), B::c())
        }
    }

    /// A C file that checks every declaration (and the iovec layout) against the headers, plus
    /// `extra` lines.
    fn c_source(extra: &str) -> String {
        let mut s = String::from(
            "#include <stddef.h>\n#include <stdint.h>\n#include <sys/uio.h>\n\
             #include <rados/librados.h>\n#include <rbd/librbd.h>\n",
        );
        s += &format!(
            "_Static_assert(sizeof(struct iovec) == {}, \"iovec size\");\n\
             _Static_assert(offsetof(struct iovec, iov_len) == {}, \"iov_len offset\");\n\
             _Static_assert(sizeof(rbd_callback_t) == sizeof(void *), \"callback\");\n",
            std::mem::size_of::<libc::iovec>(),
            std::mem::offset_of!(libc::iovec, iov_len),
        );
        for (_, decl) in c_declarations() {
            s += &decl;
            s.push('\n');
        }
        s += extra;
        s
    }

    /// Compiles `src`; `Ok(())` when it compiles, else the compiler's message.
    fn compile(tag: &str, src: &str) -> Result<(), String> {
        let dir =
            std::env::temp_dir().join(format!("spinblk-rbd-hdr-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let c = dir.join("check.c");
        std::fs::write(&c, src).expect("write C file");
        let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args([
                "-std=gnu11",
                "-Wall",
                "-Werror",
                "-Werror=incompatible-pointer-types",
            ])
            .args(["-c", "-o"])
            .arg(dir.join("check.o"))
            .arg(&c)
            .output();
        let _ = std::fs::remove_dir_all(&dir);
        match out {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
            Err(e) => Err(format!("cannot run cc: {e}")),
        }
    }

    /// Missing headers or compiler: a failure, or a printed skip with SPINBLK_SKIP_CEPH=1.
    fn headers_present() -> bool {
        let present = ["/usr/include/rbd/librbd.h", "/usr/include/rados/librados.h"]
            .iter()
            .all(|h| std::path::Path::new(h).exists());
        if present {
            return true;
        }
        if std::env::var("SPINBLK_SKIP_CEPH").as_deref() == Ok("1") {
            eprintln!("SKIPPED (SPINBLK_SKIP_CEPH=1): librbd/librados headers missing");
            return false;
        }
        panic!(
            "librbd-dev/librados-dev headers missing (/usr/include/rbd/librbd.h): run \
             scripts/install-deps.sh, or set SPINBLK_SKIP_CEPH=1 to skip the Ceph tests"
        );
    }

    #[test]
    fn signatures_match_headers() {
        if !headers_present() {
            return;
        }
        let src = c_source("");
        if let Err(e) = compile("ok", &src) {
            panic!("declarations disagree with the headers:\n{e}\n--- source ---\n{src}");
        }
        // The check has teeth: a wrong pointer type or a wrong width is refused.
        let wrong_ptr = c_source("int (*const bad1)(rbd_image_t, int *) = &rbd_get_size;\n");
        assert!(
            compile("ptr", &wrong_ptr).is_err(),
            "a wrong pointer type compiled"
        );
        let wrong_width = c_source("int (*const bad2)(rbd_image_t, uint32_t) = &rbd_resize;\n");
        assert!(
            compile("width", &wrong_width).is_err(),
            "a wrong width compiled"
        );
    }

    /// Without the libraries, RBD is a one-line error naming what is missing.
    #[test]
    fn missing_library_is_a_one_line_error() {
        let Err(e) = Api::load("libspinblk-no-such-rados.so.2", LIBRBD) else {
            panic!("loaded a library that does not exist");
        };
        let msg = RbdError::Library(e).to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains("libspinblk-no-such-rados.so.2"), "{msg}");
        assert!(msg.contains("librbd1"), "{msg}");
    }

    #[test]
    fn declarations_cover_every_entry() {
        let decls = c_declarations();
        assert!(decls.iter().any(|(n, d)| *n == "rbd_aio_readv"
            && d == "int (*const chk_rbd_aio_readv)(rbd_image_t, const struct iovec *, int, \
                     uint64_t, rbd_completion_t) = &rbd_aio_readv;"));
        assert!(decls.iter().any(|(n, d)| *n == "rbd_aio_create_completion"
            && d.contains("(void *, void (*)(rbd_completion_t, void *), rbd_completion_t *)")));
        assert_eq!(decls.len(), 24);
    }
}
