//! The OpenVINO engine, loaded at run time from OpenVINO's C library (`libopenvino_c.so`, as
//! the `openvino` PyPI wheel or Intel's archive installs it; nothing is linked at build time):
//! where the CPU computes in bfloat16 (AVX-512 BF16, AMX) OpenVINO runs the graph in it, which
//! ONNX Runtime's CPU provider does not.

use std::ffi::{CStr, CString, c_char, c_void};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ndarray::ArrayView4;

use super::io::ModelIo;
use super::{Engine, EngineConfig, EngineError, Precision, Scored, map_to_nchw};
use crate::bundle::Bundle;

/// The library's file name prefix on Linux (`libopenvino_c.so`, `.so.2641`, `.so.2026.4.1`).
const LIB_PREFIX: &str = "libopenvino_c.so";
/// The oldest release whose C API has the element types below.
const MIN_YEAR: u32 = 2025;

// Element types as the C API numbers them since OpenVINO 2025 (`DYNAMIC = 0`). Older releases
// numbered them from `UNDEFINED = 0`; a load checks the model's input against `F32`.
const F32: u32 = 4;
const I64: u32 = 10;

type Status = i32;
type Handle = *mut c_void;

#[repr(C)]
struct Shape {
    rank: i64,
    dims: *mut i64,
}

#[repr(C)]
struct Dimension {
    min: i64,
    max: i64,
}

#[repr(C)]
struct PartialShape {
    rank: Dimension,
    dims: *mut Dimension,
}

#[repr(C)]
struct Version {
    build_number: *const c_char,
    description: *const c_char,
}

/// The C functions vigil calls, resolved once from the library.
struct Api {
    core: Handle,
    version: String,
    path: PathBuf,
    core_free: unsafe extern "C" fn(Handle),
    read_model: unsafe extern "C" fn(Handle, *const c_char, *const c_char, *mut Handle) -> Status,
    read_model_from_memory: unsafe extern "C" fn(Handle, *const c_char, usize, Handle, *mut Handle) -> Status,
    model_free: unsafe extern "C" fn(Handle),
    model_inputs_size: unsafe extern "C" fn(Handle, *mut usize) -> Status,
    model_const_input_by_index: unsafe extern "C" fn(Handle, usize, *mut Handle) -> Status,
    port_get_any_name: unsafe extern "C" fn(Handle, *mut *mut c_char) -> Status,
    port_get_element_type: unsafe extern "C" fn(Handle, *mut u32) -> Status,
    output_const_port_free: unsafe extern "C" fn(Handle),
    partial_shape_create_static: unsafe extern "C" fn(i64, *const i64, *mut PartialShape) -> Status,
    partial_shape_free: unsafe extern "C" fn(*mut PartialShape),
    model_reshape: unsafe extern "C" fn(Handle, *const *const c_char, *const PartialShape, usize) -> Status,
    compile_model: unsafe extern "C" fn(Handle, Handle, *const c_char, usize, *mut Handle, ...) -> Status,
    compiled_model_get_property: unsafe extern "C" fn(Handle, *const c_char, *mut *mut c_char) -> Status,
    create_infer_request: unsafe extern "C" fn(Handle, *mut Handle) -> Status,
    compiled_model_free: unsafe extern "C" fn(Handle),
    set_tensor: unsafe extern "C" fn(Handle, *const c_char, Handle) -> Status,
    get_tensor: unsafe extern "C" fn(Handle, *const c_char, *mut Handle) -> Status,
    infer: unsafe extern "C" fn(Handle) -> Status,
    infer_request_free: unsafe extern "C" fn(Handle),
    shape_create: unsafe extern "C" fn(i64, *const i64, *mut Shape) -> Status,
    shape_free: unsafe extern "C" fn(*mut Shape) -> Status,
    tensor_create_from_host_ptr: unsafe extern "C" fn(u32, Shape, *mut c_void, *mut Handle) -> Status,
    tensor_get_shape: unsafe extern "C" fn(Handle, *mut Shape) -> Status,
    tensor_data: unsafe extern "C" fn(Handle, *mut *mut c_void) -> Status,
    tensor_free: unsafe extern "C" fn(Handle),
    free: unsafe extern "C" fn(*const c_char),
    last_err_msg: unsafe extern "C" fn() -> *const c_char,
    // Last: the functions above point into it.
    _library: libloading::Library,
}

// SAFETY: OpenVINO's core is thread-safe; the rest is function pointers and owned strings.
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

impl Drop for Api {
    fn drop(&mut self) {
        // SAFETY: `core` came from ov_core_create and is freed once.
        unsafe { (self.core_free)(self.core) }
    }
}

/// The process-wide library, loaded on first use (a failed attempt is not remembered).
static LIBRARY: Mutex<Option<Arc<Api>>> = Mutex::new(None);

/// Finds the library: the configured path, else `VIGIL_OPENVINO_LIBRARY`, else beside vigil,
/// then where Intel's archive and distributions install it; every place looked at when
/// nothing is found.
pub fn find_library(configured: Option<&Path>) -> Result<PathBuf, EngineError> {
    let mut dirs = super::library::beside_binary();
    for d in [
        "/usr/lib/vigil",
        "/opt/intel/openvino/runtime/lib/intel64",
        "/opt/intel/openvino/runtime/lib/aarch64",
        "/usr/local/lib",
        "/usr/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
    ] {
        dirs.push(PathBuf::from(d));
    }
    let search = super::library::Search {
        prefix: LIB_PREFIX,
        key: "engine.openvino_library",
        env: "VIGIL_OPENVINO_LIBRARY",
        dirs,
    };
    search.find(configured).map_err(|searched| EngineError::OpenVinoNotFound { searched })
}

/// Whether this CPU computes in bfloat16 natively (x86: AVX-512 BF16 or AMX), where
/// OpenVINO's own default precision is bfloat16.
pub fn cpu_has_bf16() -> bool {
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .find(|l| l.starts_with("flags"))
            .is_some_and(|l| l.split_whitespace().any(|f| f == "avx512_bf16" || f == "amx_bf16"))
    })
}

/// Loads the library (once per process) and creates its core.
fn api(configured: Option<&Path>) -> Result<Arc<Api>, EngineError> {
    let path = find_library(configured)?;
    let mut guard = LIBRARY.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(api) = guard.as_ref() {
        if api.path != path {
            tracing::warn!(
                "OpenVINO is already loaded from {}; one library per process, so {} is not used",
                api.path.display(),
                path.display()
            );
        }
        return Ok(api.clone());
    }
    let api = Arc::new(open(&path)?);
    *guard = Some(api.clone());
    Ok(api)
}

fn open(path: &Path) -> Result<Api, EngineError> {
    let unusable = |reason: String| EngineError::OpenVinoUnusable { path: path.to_path_buf(), reason };
    // SAFETY: loading OpenVINO runs its initialisers, which have no preconditions.
    let library = unsafe { libloading::Library::new(path) }.map_err(|e| unusable(e.to_string()))?;
    macro_rules! sym {
        ($name:literal) => {
            // SAFETY: the type is the C API's declaration of this function (openvino/c/*.h).
            *unsafe { library.get(concat!($name, "\0").as_bytes()) }
                .map_err(|e| unusable(format!("{} is missing ({e})", $name)))?
        };
    }
    let get_version: unsafe extern "C" fn(*mut Version) -> Status = sym!("ov_get_openvino_version");
    let version_free: unsafe extern "C" fn(*mut Version) = sym!("ov_version_free");
    let core_create: unsafe extern "C" fn(*mut Handle) -> Status = sym!("ov_core_create");
    let mut v = Version { build_number: std::ptr::null(), description: std::ptr::null() };
    // SAFETY: `v` is written by the library and freed by it.
    let version = unsafe {
        if get_version(&mut v) != 0 || v.build_number.is_null() {
            return Err(unusable("it does not report its version".into()));
        }
        let s = CStr::from_ptr(v.build_number).to_string_lossy().into_owned();
        version_free(&mut v);
        s
    };
    let year: u32 = version.split(['.', '-']).next().and_then(|y| y.parse().ok()).unwrap_or(0);
    if year < MIN_YEAR {
        return Err(unusable(format!("it is OpenVINO {version}")));
    }
    let mut core: Handle = std::ptr::null_mut();
    // SAFETY: out-pointer written on success.
    if unsafe { core_create(&mut core) } != 0 || core.is_null() {
        return Err(unusable("ov_core_create failed".into()));
    }
    Ok(Api {
        core,
        version,
        path: path.to_path_buf(),
        core_free: sym!("ov_core_free"),
        read_model: sym!("ov_core_read_model"),
        read_model_from_memory: sym!("ov_core_read_model_from_memory_buffer"),
        model_free: sym!("ov_model_free"),
        model_inputs_size: sym!("ov_model_inputs_size"),
        model_const_input_by_index: sym!("ov_model_const_input_by_index"),
        port_get_any_name: sym!("ov_port_get_any_name"),
        port_get_element_type: sym!("ov_port_get_element_type"),
        output_const_port_free: sym!("ov_output_const_port_free"),
        partial_shape_create_static: sym!("ov_partial_shape_create_static"),
        partial_shape_free: sym!("ov_partial_shape_free"),
        model_reshape: sym!("ov_model_reshape"),
        compile_model: sym!("ov_core_compile_model"),
        compiled_model_get_property: sym!("ov_compiled_model_get_property"),
        create_infer_request: sym!("ov_compiled_model_create_infer_request"),
        compiled_model_free: sym!("ov_compiled_model_free"),
        set_tensor: sym!("ov_infer_request_set_tensor"),
        get_tensor: sym!("ov_infer_request_get_tensor"),
        infer: sym!("ov_infer_request_infer"),
        infer_request_free: sym!("ov_infer_request_free"),
        shape_create: sym!("ov_shape_create"),
        shape_free: sym!("ov_shape_free"),
        tensor_create_from_host_ptr: sym!("ov_tensor_create_from_host_ptr"),
        tensor_get_shape: sym!("ov_tensor_get_shape"),
        tensor_data: sym!("ov_tensor_data"),
        tensor_free: sym!("ov_tensor_free"),
        free: sym!("ov_free"),
        last_err_msg: sym!("ov_get_last_err_msg"),
        _library: library,
    })
}

impl Api {
    /// `status` as a result, with OpenVINO's last message.
    fn check(&self, status: Status, what: &str) -> Result<(), String> {
        if status == 0 {
            return Ok(());
        }
        // SAFETY: the message is a copy the caller frees with ov_free.
        let message = unsafe {
            let p = (self.last_err_msg)();
            if p.is_null() {
                String::new()
            } else {
                let s = CStr::from_ptr(p).to_string_lossy().trim().to_string();
                (self.free)(p);
                s
            }
        };
        Err(format!(
            "{what} failed (status {status}){}",
            if message.is_empty() { String::new() } else { format!(": {message}") }
        ))
    }

    /// A tensor over `data` (not copied) of `dims`, freed by the caller with `tensor_free`.
    ///
    /// SAFETY: `data` holds the product of `dims` elements of `element` and outlives the tensor.
    unsafe fn tensor(&self, element: u32, dims: &[i64], data: *mut c_void) -> Result<Handle, String> {
        let mut shape = Shape { rank: 0, dims: std::ptr::null_mut() };
        unsafe {
            self.check((self.shape_create)(dims.len() as i64, dims.as_ptr(), &mut shape), "ov_shape_create")?;
            let mut tensor: Handle = std::ptr::null_mut();
            let made = (self.tensor_create_from_host_ptr)(
                element,
                Shape { rank: shape.rank, dims: shape.dims },
                data,
                &mut tensor,
            );
            (self.shape_free)(&mut shape);
            self.check(made, "ov_tensor_create_from_host_ptr")?;
            Ok(tensor)
        }
    }
}

/// A model compiled for the CPU with one inference request. Calls from several workers take
/// turns (as with ONNX Runtime); each already uses `threads` cores.
pub struct OpenVinoEngine {
    api: Arc<Api>,
    compiled: Handle,
    request: Mutex<Handle>,
    input: CString,
    class_input: Option<CString>,
    score: CString,
    map: Option<CString>,
    chw: [usize; 3],
    /// The precision OpenVINO runs in (`bf16`, `f32`), as it reports it.
    pub precision: String,
}

// SAFETY: the request is only used under its mutex; the compiled model is thread-safe.
unsafe impl Send for OpenVinoEngine {}
unsafe impl Sync for OpenVinoEngine {}

impl Drop for OpenVinoEngine {
    fn drop(&mut self) {
        let request = *self.request.get_mut().unwrap_or_else(|p| p.into_inner());
        // SAFETY: both came from the library and are freed once, the request first.
        unsafe {
            (self.api.infer_request_free)(request);
            (self.api.compiled_model_free)(self.compiled);
        }
    }
}

impl OpenVinoEngine {
    /// Reads the bundle's model (its bytes, or its file when a server released them), fixes
    /// its batch at 1, and compiles it for the CPU at the configured precision.
    pub fn load(bundle: &Bundle, io: &ModelIo, config: &EngineConfig) -> Result<Self, EngineError> {
        let api = api(config.openvino_library.as_deref())?;
        let load_err =
            |reason: String| EngineError::Load { engine: "openvino", path: bundle.model_path.clone(), reason };
        let m = &bundle.manifest.input;
        let chw = [m.channels, m.height, m.width];
        let mut model: Handle = std::ptr::null_mut();
        // SAFETY: the bytes or the path outlive the call; the model is freed below.
        let read = unsafe {
            if bundle.model_bytes.is_empty() {
                let path = CString::new(bundle.model_path.to_string_lossy().as_bytes())
                    .map_err(|e| load_err(e.to_string()))?;
                (api.read_model)(api.core, path.as_ptr(), std::ptr::null(), &mut model)
            } else {
                let bytes = &bundle.model_bytes;
                (api.read_model_from_memory)(
                    api.core,
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    std::ptr::null_mut(),
                    &mut model,
                )
            }
        };
        api.check(read, "reading the model").map_err(load_err)?;
        let compiled = compile(&api, model, io, chw, config);
        // SAFETY: the compiled model holds what it needs of the model.
        unsafe { (api.model_free)(model) };
        let (compiled, precision) = compiled.map_err(|e| match e {
            Problem::Load(reason) => load_err(reason),
            Problem::Unusable(reason) => EngineError::OpenVinoUnusable { path: api.path.clone(), reason },
        })?;
        let mut request: Handle = std::ptr::null_mut();
        // SAFETY: out-pointer written on success; freed on drop.
        if let Err(e) = api.check(unsafe { (api.create_infer_request)(compiled, &mut request) }, "creating a request") {
            unsafe { (api.compiled_model_free)(compiled) };
            return Err(load_err(e));
        }
        let name = |s: &str| CString::new(s).map_err(|e| load_err(e.to_string()));
        tracing::debug!("openvino {}: {} compiled in {precision}", api.version, bundle.model_path.display());
        Ok(OpenVinoEngine {
            input: name(&io.input)?,
            class_input: io.class_input.as_ref().map(|(n, _)| name(n)).transpose()?,
            score: name(&io.score)?,
            map: io.map.as_deref().map(name).transpose()?,
            api,
            compiled,
            request: Mutex::new(request),
            chw,
            precision,
        })
    }
}

enum Problem {
    Load(String),
    Unusable(String),
}

/// Checks the model's inputs, reshapes them to one image, and compiles.
fn compile(
    api: &Api,
    model: Handle,
    io: &ModelIo,
    [c, h, w]: [usize; 3],
    config: &EngineConfig,
) -> Result<(Handle, String), Problem> {
    let mut names: Vec<CString> = Vec::new();
    let mut shapes: Vec<PartialShape> = Vec::new();
    let result = (|| {
        let mut count = 0usize;
        // SAFETY: every handle below comes from the library and is freed here.
        unsafe {
            api.check((api.model_inputs_size)(model, &mut count), "ov_model_inputs_size").map_err(Problem::Load)?;
            for i in 0..count {
                let mut port: Handle = std::ptr::null_mut();
                api.check((api.model_const_input_by_index)(model, i, &mut port), "reading an input")
                    .map_err(Problem::Load)?;
                let mut raw: *mut c_char = std::ptr::null_mut();
                let mut element = u32::MAX;
                let named = api.check((api.port_get_any_name)(port, &mut raw), "an input's name");
                let typed = api.check((api.port_get_element_type)(port, &mut element), "an input's type");
                (api.output_const_port_free)(port);
                let name = (!raw.is_null()).then(|| CStr::from_ptr(raw).to_owned());
                if !raw.is_null() {
                    (api.free)(raw);
                }
                named.and(typed).map_err(Problem::Load)?;
                let name = name.ok_or_else(|| Problem::Load("an input has no name".into()))?;
                let (dims, expected) = if name.to_bytes() == io.input.as_bytes() {
                    (vec![1, c as i64, h as i64, w as i64], F32)
                } else {
                    (vec![1], I64)
                };
                if element != expected {
                    // vigil's graphs take float32 images and int64 classes: another number
                    // here is another release's numbering of the element types.
                    return Err(Problem::Unusable(format!(
                        "input {} has element type {element} where {expected} was expected: this release numbers its types differently from OpenVINO {MIN_YEAR} and newer",
                        name.to_string_lossy()
                    )));
                }
                let mut shape = PartialShape { rank: Dimension { min: 0, max: 0 }, dims: std::ptr::null_mut() };
                api.check((api.partial_shape_create_static)(dims.len() as i64, dims.as_ptr(), &mut shape), "a shape")
                    .map_err(Problem::Load)?;
                shapes.push(shape);
                names.push(name);
            }
            let pointers: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
            api.check(
                (api.model_reshape)(model, pointers.as_ptr(), shapes.as_ptr(), shapes.len()),
                "fixing the batch at 1",
            )
            .map_err(Problem::Load)?;
        }
        let threads = CString::new(config.effective_threads().to_string()).expect("digits");
        let mut compiled: Handle = std::ptr::null_mut();
        // One stream, latency first: one frame at a time on every configured thread; bfloat16
        // only where asked for and the CPU computes in it (OpenVINO's own default there).
        let precision = match config.precision {
            Precision::Auto if cpu_has_bf16() => c"bf16",
            _ => c"f32",
        };
        // SAFETY: each property is a key and a value, both NUL-terminated; the count is of both.
        let status = unsafe {
            (api.compile_model)(
                api.core,
                model,
                c"CPU".as_ptr(),
                8,
                &mut compiled,
                c"INFERENCE_NUM_THREADS".as_ptr(),
                threads.as_ptr(),
                c"PERFORMANCE_HINT".as_ptr(),
                c"LATENCY".as_ptr(),
                c"NUM_STREAMS".as_ptr(),
                c"1".as_ptr(),
                c"INFERENCE_PRECISION_HINT".as_ptr(),
                precision.as_ptr(),
            )
        };
        api.check(status, "compiling for the CPU").map_err(Problem::Load)?;
        let mut value: *mut c_char = std::ptr::null_mut();
        // SAFETY: the value is a copy freed with ov_free.
        let precision = unsafe {
            if (api.compiled_model_get_property)(compiled, c"INFERENCE_PRECISION_HINT".as_ptr(), &mut value) == 0
                && !value.is_null()
            {
                let s = CStr::from_ptr(value).to_string_lossy().into_owned();
                (api.free)(value);
                s
            } else {
                "unknown".to_string()
            }
        };
        Ok((compiled, precision))
    })();
    for shape in &mut shapes {
        // SAFETY: each was created by ov_partial_shape_create_static.
        unsafe { (api.partial_shape_free)(shape) };
    }
    result
}

impl Engine for OpenVinoEngine {
    fn name(&self) -> &'static str {
        "openvino"
    }

    fn run(&self, batch: ArrayView4<'_, f32>, classes: Option<&[i64]>) -> Result<Scored, EngineError> {
        let run_err = |reason: String| EngineError::Run { engine: "openvino", reason };
        let api = &self.api;
        let [c, h, w] = self.chw;
        let image = c * h * w;
        let contiguous = batch.as_standard_layout();
        let data = contiguous.as_slice().expect("standard layout");
        let n = data.len() / image;
        let mut scores = Vec::with_capacity(n);
        let mut maps: Vec<f32> = Vec::new();
        let mut map_dims: Vec<usize> = Vec::new();
        let request = self.request.lock().unwrap_or_else(|p| p.into_inner());
        for i in 0..n {
            let mut class = classes.map(|k| k[i]);
            // SAFETY: the image and class outlive the tensors, which are freed after the run
            // (OpenVINO only reads an input); outputs are read while the request is held and
            // copied before the next run.
            unsafe {
                let input = api
                    .tensor(F32, &[1, c as i64, h as i64, w as i64], data[i * image..].as_ptr().cast_mut().cast())
                    .map_err(run_err)?;
                let mut class_tensor: Handle = std::ptr::null_mut();
                let mut status = api.check((api.set_tensor)(*request, self.input.as_ptr(), input), "setting the image");
                if let (Ok(()), Some(name), Some(k)) = (&status, &self.class_input, class.as_mut()) {
                    status = api.tensor(I64, &[1], (k as *mut i64).cast()).and_then(|t| {
                        class_tensor = t;
                        api.check((api.set_tensor)(*request, name.as_ptr(), t), "setting the class")
                    });
                }
                let status = status.and_then(|()| api.check((api.infer)(*request), "inference"));
                (api.tensor_free)(input);
                if !class_tensor.is_null() {
                    (api.tensor_free)(class_tensor);
                }
                status.map_err(run_err)?;
                let score = output(api, *request, &self.score).map_err(run_err)?;
                scores.push(*score.1.first().ok_or_else(|| run_err("the score output is empty".into()))?);
                if let Some(name) = &self.map {
                    let (dims, values) = output(api, *request, name).map_err(run_err)?;
                    map_dims = dims;
                    maps.extend_from_slice(&values);
                }
            }
        }
        let maps = match &self.map {
            Some(_) => {
                let mut dims = map_dims;
                if let Some(first) = dims.first_mut() {
                    *first = n;
                }
                Some(
                    map_to_nchw(&dims, maps)
                        .ok_or_else(|| run_err(format!("anomaly map has shape {dims:?}, expected [N, 1, H, W]")))?,
                )
            }
            None => None,
        };
        Ok(Scored { scores, maps })
    }
}

/// The shape and values of the request's output `name` (float32).
///
/// SAFETY: `request` has run.
unsafe fn output(api: &Api, request: Handle, name: &CStr) -> Result<(Vec<usize>, Vec<f32>), String> {
    unsafe {
        let mut tensor: Handle = std::ptr::null_mut();
        api.check((api.get_tensor)(request, name.as_ptr(), &mut tensor), "reading an output")?;
        let mut shape = Shape { rank: 0, dims: std::ptr::null_mut() };
        let mut data: *mut c_void = std::ptr::null_mut();
        let got = api
            .check((api.tensor_get_shape)(tensor, &mut shape), "an output's shape")
            .and_then(|()| api.check((api.tensor_data)(tensor, &mut data), "an output's data"));
        let result = got.map(|()| {
            let dims: Vec<usize> = std::slice::from_raw_parts(shape.dims, shape.rank.max(0) as usize)
                .iter()
                .map(|&d| d.max(0) as usize)
                .collect();
            let len = dims.iter().product::<usize>();
            (dims, std::slice::from_raw_parts(data.cast::<f32>(), len).to_vec())
        });
        if !shape.dims.is_null() {
            (api.shape_free)(&mut shape);
        }
        (api.tensor_free)(tensor);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_the_library_is_refused_with_its_path() {
        let dir = std::env::temp_dir().join(format!("vigil-openvino-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("libopenvino_c.so");
        std::fs::write(&file, b"not a library").unwrap();
        let err = open(&file).err().expect("refused");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(err, EngineError::OpenVinoUnusable { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&file.display().to_string()) && msg.contains("OpenVINO 2025.0 or newer"), "{msg}");
        assert_eq!(
            find_library(Some(&dir.join("nothing"))).err().map(|e| e.to_string().contains("which does not exist")),
            Some(true)
        );
    }
}
