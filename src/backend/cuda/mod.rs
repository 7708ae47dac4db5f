//! The CUDA backend: hand-written kernels from `kernels/*.cu` compiled at run time with NVRTC for the
//! device's architecture, cuBLAS for the matrix products, all through cudarc with dynamic loading (the
//! crate builds and runs without CUDA; `CudaBackend::new` returns an error where there is none).
//!
//! Precision policy (docs/gpu.md):
//! - weights and GEMM inputs in the compute dtype (f16, bf16 or f32; default the checkpoint's stored dtype);
//!   cuBLAS `gemm_ex` with f32 compute (tensor cores for f16/bf16), split-K reduced in f32; a bias is added
//!   once in f32 (the GEMM accumulates onto an f32 output pre-filled with it, then one rounding);
//! - 1-D parameters (LayerNorm weights, biases) are kept in f32; the residual stream is f32 (embedding
//!   output, residual adds), so only GEMM inputs/outputs and attention inputs/outputs are rounded;
//! - LayerNorm statistics, rotary angles, attention scores / softmax / accumulation, GELU: f32;
//! - the LM head writes f32 logits (f16 x f16 -> f32 C) and the fused log-softmax gather works in f32.
//!
//! Tensors are untyped device buffers (`CudaSlice<u8>`) tagged with a dtype; kernels are picked by name
//! from the dtypes (`layernorm_f32_f16`, ...). One stream, no cross-stream events.
//!
//! `LMSCORE_CUDA_SYNC=1` synchronises after every kernel launch and cuBLAS call and checks for a device
//! error there, so a fault is reported against the op that caused it (without it, a fault surfaces at the
//! next synchronisation, against whichever op happens to be running then).

pub mod activity;
pub mod kernels;
pub mod layout;

use super::{check_targets, Activity, AttnShape, Backend, BatchLayout, Tensor2, TokenScore};
use crate::checkpoint::{DType, HostTensor};
use crate::error::{Error, Result};
use cudarc::cublas::{result as blas_result, sys as blas_sys, CudaBlas};
use cudarc::driver::{
    sys as cu_sys, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, DriverError,
    LaunchArgs, LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use half::{bf16, f16};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Whether a CUDA driver can be loaded on this machine (never panics).
pub fn driver_present() -> bool {
    // SAFETY: only probes for the shared library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether the loaded libcuda is the CPU stand-in of `cuda-sim/` rather than a GPU driver.
pub fn driver_is_stand_in() -> bool {
    // SAFETY: the library is loadable (checked first); looking a symbol up runs nothing.
    driver_present() && unsafe { cu_sys::culib().get::<*const u8>(b"lms_sim_identity\0").is_ok() }
}

pub fn unavailable() -> Error {
    Error::Cuda("no CUDA driver/device found (libcuda.so could not be loaded); use --device cpu".into())
}

/// Number of CUDA devices, or an error saying why there are none. Never panics.
pub fn device_count() -> Result<usize> {
    if !driver_present() {
        return Err(unavailable());
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => Ok(n as usize),
        Ok(_) => Err(Error::Cuda(
            "no CUDA driver/device found (the driver reports 0 devices); use --device cpu".into(),
        )),
        Err(e) => Err(Error::Cuda(format!(
            "no CUDA driver/device found (cuInit/cuDeviceGetCount: {e}); use --device cpu"
        ))),
    }
}

/// Ok when a device is usable by `CudaBackend::new` (driver, device, cuBLAS and NVRTC all present).
pub fn check_available() -> Result<()> {
    device_count()?;
    // SAFETY: only probes for the shared library.
    if !unsafe { blas_sys::is_culib_present() } {
        return Err(Error::Cuda(
            "cuBLAS not found: libcublas.so.13 could not be loaded (put its directory on LD_LIBRARY_PATH)".into(),
        ));
    }
    if !kernels::nvrtc_present() {
        return Err(kernels::nvrtc_missing());
    }
    Ok(())
}

/// Every (kernel file, function) the backend may launch: the compile test checks each is in the PTX, so a
/// name that drifts between a `.cu` file and this module fails on CPU-only CI rather than on a GPU.
pub fn entry_points() -> Vec<(&'static str, String)> {
    let types = [DType::F32, DType::F16, DType::BF16];
    let mut v: Vec<(&'static str, String)> = vec![];
    for a in types {
        v.push(("embedding", format!("embedding_{}", suffix(a))));
        v.push(("qkv_rotary", format!("qkv_rotary_{}", suffix(a))));
        v.push(("parallel_norms", format!("parallel_norms_{}", suffix(a))));
        for dpl in [1, 2, 3, 4, 8] {
            v.push(("attention", format!("attention_{}_d{dpl}", suffix(a))));
        }
        if a != DType::F32 {
            for hd in layout::ATTN_TC_HEAD_DIMS {
                v.push(("attention_tc", format!("attention_tc_{}_hd{hd}", suffix(a))));
            }
        }
        for b in types {
            for op in ["layernorm", "bias_gelu", "residual_add", "cast", "broadcast_rows"] {
                v.push((op, format!("{op}_{}_{}", suffix(a), suffix(b))));
            }
        }
    }
    for a in types {
        v.push(("random_fill", format!("random_fill_{}", suffix(a))));
    }
    for f in ["gather_rows_u16", "gather_rows_u32"] {
        v.push(("gather_rows", f.to_string()));
    }
    for f in ["logsoftmax_stats", "logsoftmax_targets"] {
        v.push(("logsoftmax_gather", f.to_string()));
    }
    v
}

fn suffix(dt: DType) -> &'static str {
    match dt {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::U8 | DType::Other => "unsupported",
    }
}

fn cuda_dtype(dt: DType) -> blas_sys::cudaDataType {
    match dt {
        DType::F16 => blas_sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => blas_sys::cudaDataType::CUDA_R_16BF,
        _ => blas_sys::cudaDataType::CUDA_R_32F,
    }
}

/// A 2-D row-major tensor on the device: raw bytes plus a dtype (F32, F16 or BF16).
pub struct CudaTensor {
    pub rows: usize,
    pub cols: usize,
    pub dtype: DType,
    /// At least one byte long (zero-size allocations are avoided); holds rows * cols * dtype.size() bytes.
    buf: CudaSlice<u8>,
}

impl CudaTensor {
    pub fn bytes(&self) -> usize {
        self.rows * self.cols * self.dtype.size()
    }
    pub fn numel(&self) -> usize {
        self.rows * self.cols
    }
}

impl Tensor2 for CudaTensor {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
}

/// A u32 table on the device: a view into the buffer of the upload that brought it (every table of a
/// batch shares one buffer and one copy). Its host values stay for bound checks and error messages.
pub struct CudaIndex {
    buf: Arc<CudaSlice<u32>>,
    start: usize,
    host: Vec<u32>,
}

impl CudaIndex {
    pub fn len(&self) -> usize {
        self.host.len()
    }
    pub fn is_empty(&self) -> bool {
        self.host.is_empty()
    }
    fn view(&self) -> CudaView<'_, u32> {
        // At least one element, so an empty table is still a valid (never read) pointer.
        self.buf.slice(self.start..self.start + self.host.len().max(1))
    }
}

/// A `BatchLayout` on the device: row positions and the attention work tables.
pub struct CudaLayout {
    pub tokens: usize,
    pub past_len: usize,
    pub num_tiles: usize,
    positions: CudaIndex,
    tiles: CudaIndex,
    seg_off: CudaIndex,
    ranges: CudaIndex,
    /// The tensor-core kernel's 64-row tiles and each row's segment start (layout::tc_tiles).
    num_tc_tiles: usize,
    tc_tiles: CudaIndex,
    row_seg: CudaIndex,
}

/// A batch's target scores on the device: [n] log-probabilities (f32 bits), then [n] greedy flags, so
/// that one copy reads them all back.
pub struct CudaScores {
    n: usize,
    buf: CudaSlice<u32>,
}

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Dropped by hand (see `Drop`): cudarc's own drop unwraps cublasDestroy, which fails after a device fault.
    blas: std::mem::ManuallyDrop<CudaBlas>,
    /// LMSCORE_CUDA_SYNC=1: synchronise and check after every launch.
    sync_each_launch: bool,
    dtype: DType,
    ordinal: usize,
    device_name: String,
    compute_capability: (i32, i32),
    /// Largest dynamic shared memory a block may opt into.
    max_smem_optin: usize,
    modules: HashMap<&'static str, Arc<CudaModule>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    /// Functions whose dynamic shared-memory limit was raised (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES).
    smem_raised: Mutex<HashSet<String>>,
    /// Pinned host memory every index upload is staged in (reused, grown as needed; cudarc waits for the
    /// previous copy out of it before it is written again).
    staging: Mutex<Option<PinnedHostSlice<u32>>>,
    /// Recorded after the last copy out of `staging`: tells whether writing it again makes the host wait.
    staging_copied: Mutex<Option<CudaEvent>>,
    counters: activity::Counters,
    /// f16 / bf16 attention at the head dims it is compiled for runs on tensor cores (attention_tc.cu);
    /// off: the f32 CUDA-core kernel (attention.cu) for every dtype (tests and benches compare the two).
    tensor_core_attention: std::sync::atomic::AtomicBool,
}

impl CudaBackend {
    /// Open device `ordinal` computing in `dtype` (F16, BF16 or F32) and compile every kernel for it.
    /// Without a driver or device this is `Error::Cuda("no CUDA driver/device found ...")`, never a panic.
    pub fn new(ordinal: usize, dtype: DType) -> Result<Self> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(Error::Cuda(format!(
                "no CUDA driver/device found: device {ordinal} asked for, {count} present"
            )));
        }
        check_available()?;
        if !matches!(dtype, DType::F16 | DType::BF16 | DType::F32) {
            return Err(Error::invalid(format!(
                "the CUDA backend computes in f16, bf16 or f32, not {}",
                dtype.name()
            )));
        }
        let drv = |what: &str, e: DriverError| Error::Cuda(format!("{what}: {e}"));
        let ctx = CudaContext::new(ordinal).map_err(|e| drv("creating the CUDA context", e))?;
        // One stream and no cross-stream sharing: cudarc's per-buffer event tracking would only add cost.
        // SAFETY: called before any buffer is allocated.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| drv("creating a CUDA stream", e))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| Error::Cuda(format!("creating the cuBLAS handle: {e}")))?;
        // Split-K partial sums are reduced in f32 too, never in the output's half precision.
        // SAFETY: a live handle.
        unsafe { blas_sys::cublasSetMathMode(*blas.handle(), blas_sys::cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION) }
            .result()
            .map_err(|e| Error::Cuda(format!("setting the cuBLAS math mode: {e}")))?;
        let compute_capability = ctx.compute_capability().map_err(|e| drv("reading the compute capability", e))?;
        let device_name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let max_smem_optin = ctx
            .attribute(cu_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map(|v| v as usize)
            .unwrap_or(48 * 1024);
        keep_pool_memory(&ctx);

        // Compile (or fetch from the disk cache) every op file in parallel, then load the cubins.
        // mma.sync.m16n8k16 with bf16 needs sm_80: older GPUs run the f32 CUDA-core attention only.
        let tensor_cores = compute_capability.0 >= 8;
        let mut names = kernels::op_names();
        names.retain(|&n| n != "attention_tc" || tensor_cores);
        let cubins: Vec<Result<Vec<u8>>> = std::thread::scope(|s| {
            let handles: Vec<_> = names
                .iter()
                .map(|&n| s.spawn(move || kernels::cubin_for(n, compute_capability)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(Error::Cuda("kernel compilation thread panicked".into()))))
                .collect()
        });
        let mut modules = HashMap::new();
        for (name, cubin) in names.iter().zip(cubins) {
            let module = ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin?)).map_err(|e| {
                Error::Cuda(format!(
                    "loading the compiled kernels/{name}.cu for sm_{}{}: {e}",
                    compute_capability.0, compute_capability.1
                ))
            })?;
            modules.insert(*name, module);
        }
        Ok(CudaBackend {
            ctx,
            stream,
            blas: std::mem::ManuallyDrop::new(blas),
            sync_each_launch: std::env::var("LMSCORE_CUDA_SYNC").is_ok_and(|v| v == "1"),
            dtype,
            ordinal,
            device_name,
            compute_capability,
            max_smem_optin,
            modules,
            functions: Mutex::new(HashMap::new()),
            smem_raised: Mutex::new(HashSet::new()),
            staging: Mutex::new(None),
            staging_copied: Mutex::new(None),
            counters: activity::Counters::new(driver_is_stand_in()),
            tensor_core_attention: std::sync::atomic::AtomicBool::new(tensor_cores),
        })
    }

    /// Run f16 / bf16 attention on tensor cores where a variant exists (the default on sm_80 and later),
    /// or always on the f32 CUDA-core kernel. Returns whether tensor cores are now used.
    pub fn use_tensor_core_attention(&self, on: bool) -> bool {
        let on = on && self.compute_capability.0 >= 8;
        self.tensor_core_attention.store(on, std::sync::atomic::Ordering::Relaxed);
        on
    }

    /// Whether attention on `dtype` inputs runs on tensor cores (attention_tc.cu) rather than the f32 kernel,
    /// at any head dim it is compiled for: what `prepare` builds the tensor-core tiles for.
    fn tensor_cores_for(&self, dtype: DType) -> bool {
        self.tensor_core_attention.load(std::sync::atomic::Ordering::Relaxed) && matches!(dtype, DType::F16 | DType::BF16)
    }

    /// The compute dtype (GEMM inputs, attention inputs and outputs).
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device_name(&self) -> &str {
        &self.device_name
    }
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// Host f32 values as a device tensor of `dtype` (F32, F16 or BF16): tests and benches use it to feed
    /// an op the dtype it sees in the forward pass (e.g. the f32 residual stream into layernorm).
    pub fn from_host_as(&self, rows: usize, cols: usize, values: &[f32], dtype: DType) -> Result<CudaTensor> {
        if rows * cols != values.len() {
            return Err(Error::invalid(format!("from_host: {} values for [{rows}, {cols}]", values.len())));
        }
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::invalid(format!("from_host: dtype {} is not f32, f16 or bf16", dtype.name())));
        }
        let mut out = self.alloc("from_host", rows, cols, dtype)?;
        if !values.is_empty() {
            self.counters.h2d();
            self.stream
                .memcpy_htod(&encode(values, dtype), &mut out.buf)
                .map_err(|e| Error::Cuda(format!("from_host: {e}")))?;
        }
        Ok(out)
    }

    /// A [rows, cols] tensor of `dtype` filled on the device with `random_value(seed, i, offset, scale)` for
    /// element i (kernels/random_fill.cu): model-sized random weights for benches, with no host generator
    /// and no upload.
    pub fn random(&self, rows: usize, cols: usize, dtype: DType, seed: u64, offset: f32, scale: f32) -> Result<CudaTensor> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::invalid(format!("random: dtype {} is not f32, f16 or bf16", dtype.name())));
        }
        let mut out = self.alloc("random", rows, cols, dtype)?;
        let n = out.numel() as u64;
        if n > 0 {
            let name = format!("random_fill_{}", suffix(dtype));
            let f = self.func("random_fill", &name)?;
            let (grid, block) = layout::grid_1d(n);
            let mut l = self.stream.launch_builder(&f);
            l.arg(&mut out.buf).arg(&n).arg(&seed).arg(&offset).arg(&scale);
            self.launch("random", &name, &mut l, cfg(grid, block, 0))?;
        }
        Ok(out)
    }

    /// The cuBLAS handle's math mode (`cublasMath_t` bits).
    pub fn cublas_math_mode(&self) -> Result<u32> {
        let mut mode = blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH;
        // SAFETY: a live handle and an out-pointer to a local.
        unsafe { blas_sys::cublasGetMathMode(*self.blas.handle(), &mut mode) }
            .result()
            .map_err(|e| Error::Cuda(format!("reading the cuBLAS math mode: {e}")))?;
        Ok(mode as u32)
    }

    /// (free, total) bytes of device memory.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.ctx
            .bind_to_thread()
            .and_then(|_| cudarc::driver::result::mem_get_info())
            .map_err(|e| Error::Cuda(format!("reading the free device memory: {e}")))
    }

    /// Wait for all queued work (benches; every read back already synchronises).
    pub fn synchronize(&self) -> Result<()> {
        self.counters.synchronized();
        self.stream.synchronize().map_err(|e| Error::Cuda(format!("synchronize: {e}")))?;
        self.counters.settle();
        Ok(())
    }

    fn func(&self, module: &str, name: &str) -> Result<CudaFunction> {
        let mut cache = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = cache.get(name) {
            return Ok(f.clone());
        }
        let m = self
            .modules
            .get(module)
            .ok_or_else(|| Error::Cuda(format!("kernel module {module} is not loaded")))?;
        let f = m
            .load_function(name)
            .map_err(|e| Error::Cuda(format!("kernel {name} not found in kernels/{module}.cu: {e}")))?;
        cache.insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// Allocate an uninitialised [rows, cols] tensor. Out of memory is an `Error::Cuda` naming the op.
    fn alloc(&self, op: &str, rows: usize, cols: usize, dtype: DType) -> Result<CudaTensor> {
        let bytes = rows * cols * dtype.size();
        let buf = self.alloc_raw::<u8>(op, bytes.max(1), &format!("[{rows}, {cols}] {}", dtype.name()))?;
        Ok(CudaTensor { rows, cols, dtype, buf })
    }

    fn alloc_raw<T: cudarc::driver::DeviceRepr>(&self, op: &str, len: usize, what: &str) -> Result<CudaSlice<T>> {
        self.alloc_raw_or(op, len, what, &|| "try a smaller --max-batch-tokens or --dtype f16".into())
    }

    /// `alloc_raw`, with `remedy` (asked for only when the device is out of memory) ending the error.
    fn alloc_raw_or<T: cudarc::driver::DeviceRepr>(&self, op: &str, len: usize, what: &str, remedy: &dyn Fn() -> String) -> Result<CudaSlice<T>> {
        let bytes = len * std::mem::size_of::<T>();
        // SAFETY: every caller writes the buffer (kernel, copy or GEMM) before it is read.
        unsafe { self.stream.alloc::<T>(len.max(1)) }.map_err(|e| oom_or(op, bytes, what, remedy, e))
    }

    /// Upload `tables` together: laid end to end (each at a 16-byte boundary) in pinned staging memory,
    /// one host-to-device copy into one device buffer, returned as views of it.
    fn upload_tables(&self, op: &str, tables: &[&[u32]]) -> Result<Vec<CudaIndex>> {
        let mut starts = Vec::with_capacity(tables.len());
        let mut total = 0usize;
        for t in tables {
            starts.push(total);
            total += t.len().max(1).next_multiple_of(4);
        }
        let total = total.max(1);
        let pin = |e: DriverError| Error::Cuda(format!("{op}: pinned staging memory of {total} u32: {e}"));
        let mut staging = self.staging.lock().unwrap_or_else(|p| p.into_inner());
        if staging.as_ref().is_none_or(|s| s.len() < total) {
            *staging = None; // free the old one first
                             // SAFETY: the elements the kernels read are written below before the copy is queued.
            *staging = Some(unsafe { self.ctx.alloc_pinned_with_flags::<u32>(total.next_power_of_two(), 0) }.map_err(pin)?);
        }
        let stage = staging.as_mut().expect("allocated above");
        // Writing it waits (on the staging buffer's event) until the previous copy out of it has finished:
        // counted as a synchronisation when that copy is still running (in scoring it has finished: the
        // previous batch ended with its one synchronisation, or queued the copy first).
        let copied = self.staging_copied.lock().unwrap_or_else(|p| p.into_inner()).take();
        if copied.is_some_and(|e| matches!(e.try_is_complete(), Ok(false))) {
            self.counters.synchronized();
        }
        let host = stage.as_mut_slice().map_err(pin)?;
        for (t, &at) in tables.iter().zip(&starts) {
            host[at..at + t.len()].copy_from_slice(t);
        }
        // The whole staging buffer is copied (it is at most twice `total`; the rest is never read), so that
        // cudarc records the buffer's event after the copy.
        let mut dst = self.alloc_raw::<u32>(op, stage.len(), "index tables")?;
        self.counters.h2d();
        self.stream
            .memcpy_htod(&*stage, &mut dst)
            .map_err(|e| Error::Cuda(format!("{op}: upload of {total} u32: {e}")))?;
        *self.staging_copied.lock().unwrap_or_else(|p| p.into_inner()) = self.stream.record_event(None).ok();
        drop(staging);
        let buf = Arc::new(dst);
        Ok(tables
            .iter()
            .zip(starts)
            .map(|(t, start)| CudaIndex {
                buf: buf.clone(),
                start,
                host: t.to_vec(),
            })
            .collect())
    }

    fn launch_err(op: &str, kernel: &str, e: DriverError) -> Error {
        Error::Cuda(format!("{op}: launching {kernel} failed: {e}"))
    }

    /// Launch `kernel` (for op `op`) with the arguments pushed on `args`.
    fn launch(&self, op: &str, kernel: &str, args: &mut LaunchArgs, cfg: LaunchConfig) -> Result<()> {
        let timed = self.counters.before_launch(&self.stream);
        // SAFETY: every caller pushes exactly the arguments its kernel declares, on buffers of the sizes it reads.
        unsafe { args.launch(cfg) }.map_err(|e| Self::launch_err(op, kernel, e))?;
        self.counters.launched(op, &self.stream, timed);
        self.checkpoint(op, kernel)
    }

    /// Under LMSCORE_CUDA_SYNC=1, wait for `what` (of op `op`) to finish and report a device error as its own.
    fn checkpoint(&self, op: &str, what: &str) -> Result<()> {
        if self.sync_each_launch {
            self.counters.debug_synchronized();
            self.stream
                .synchronize()
                .map_err(|e| Error::Cuda(format!("{op}: {what} failed on the device: {e}")))?;
        }
        Ok(())
    }

    /// `t` in dtype `dt`: borrowed when it already is, else converted on the device.
    fn as_dtype<'a>(&self, op: &str, t: &'a CudaTensor, dt: DType) -> Result<Converted<'a>> {
        if t.dtype == dt {
            return Ok(Converted::Borrowed(t));
        }
        Ok(Converted::Owned(self.cast(op, t, dt)?))
    }

    /// A copy of `t` converted to `dt` (one rounding, round to nearest even).
    fn cast(&self, op: &str, t: &CudaTensor, dt: DType) -> Result<CudaTensor> {
        let mut out = self.alloc(op, t.rows, t.cols, dt)?;
        let name = format!("cast_{}_{}", suffix(t.dtype), suffix(dt));
        let f = self.func("cast", &name)?;
        let n = t.numel() as u64;
        if n > 0 {
            let (grid, block) = layout::grid_1d(n);
            let mut b = self.stream.launch_builder(&f);
            b.arg(&t.buf).arg(&mut out.buf).arg(&n);
            self.launch(op, &name, &mut b, cfg(grid, block, 0))?;
        }
        Ok(out)
    }

    fn check_float(op: &str, t: &CudaTensor) -> Result<()> {
        match t.dtype {
            DType::F32 | DType::F16 | DType::BF16 => Ok(()),
            other => Err(Error::invalid(format!(
                "{op}: tensor of dtype {} (expected f32, f16 or bf16)",
                other.name()
            ))),
        }
    }

    /// Row-major Y[M, N] (+)= X[M, K] . W[N, K]^T with f32 compute. cuBLAS is column-major, so this is the
    /// column-major product Y^T = W . X^T: gemm(transa = T, transb = N, m = N, n = M, k = K, A = W (lda K),
    /// B = X (ldb K), C = Y (ldc N)). `beta` = 1 accumulates onto Y (the pre-filled bias).
    fn gemm(&self, op: &str, x: &CudaTensor, w: &CudaTensor, y: &mut CudaTensor, beta: f32) -> Result<()> {
        let (m, k, n) = (x.rows, x.cols, w.rows);
        if m == 0 || n == 0 {
            return Ok(());
        }
        let too_big = |v: usize| v > i32::MAX as usize;
        if too_big(m) || too_big(k) || too_big(n) {
            return Err(Error::invalid(format!(
                "{op}: GEMM of [{m}, {k}] x [{n}, {k}]^T exceeds 32-bit dimensions"
            )));
        }
        let alpha = 1.0f32;
        // cuBLAS runs on whatever context is current on this thread: make it ours.
        self.ctx
            .bind_to_thread()
            .map_err(|e| Error::Cuda(format!("{op}: binding the CUDA context: {e}")))?;
        let (wp, _gw) = w.buf.device_ptr(&self.stream);
        let (xp, _gx) = x.buf.device_ptr(&self.stream);
        let (yp, _gy) = y.buf.device_ptr_mut(&self.stream);
        let timed = self.counters.before_launch(&self.stream);
        // SAFETY: the three buffers hold at least N*K, M*K and M*N elements of the dtypes named here.
        unsafe {
            blas_result::gemm_ex(
                *self.blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                n as i32,
                m as i32,
                k as i32,
                &alpha as *const f32 as *const _,
                wp as *const _,
                cuda_dtype(w.dtype),
                k as i32,
                xp as *const _,
                cuda_dtype(x.dtype),
                k as i32,
                &beta as *const f32 as *const _,
                yp as *mut _,
                cuda_dtype(y.dtype),
                n as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            )
        }
        .map_err(|e| {
            Error::Cuda(format!(
                "{op}: cuBLAS gemm_ex [{m}, {k}] x [{n}, {k}]^T ({} -> {}) failed: {e}",
                w.dtype.name(),
                y.dtype.name()
            ))
        })?;
        self.counters.launched(op, &self.stream, timed);
        self.checkpoint(op, "cuBLAS gemm_ex")
    }

    /// Raise a kernel's dynamic shared-memory limit once, when it needs more than the default 48 KB.
    fn ensure_smem(&self, f: &CudaFunction, name: &str, bytes: usize) -> Result<()> {
        if bytes <= 48 * 1024 {
            return Ok(());
        }
        if bytes > self.max_smem_optin {
            return Err(Error::Cuda(format!(
                "{name} needs {bytes} bytes of shared memory, the device allows {}",
                self.max_smem_optin
            )));
        }
        let mut raised = self.smem_raised.lock().unwrap_or_else(|p| p.into_inner());
        if raised.contains(name) {
            return Ok(());
        }
        // Raise to the device maximum so every head dim of this variant fits.
        self.ctx
            .bind_to_thread()
            .map_err(|e| Error::Cuda(format!("{name}: binding the CUDA context: {e}")))?;
        f.set_attribute(
            cu_sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            self.max_smem_optin as i32,
        )
        .map_err(|e| Error::Cuda(format!("raising the shared-memory limit of {name} to {} bytes: {e}", self.max_smem_optin)))?;
        raised.insert(name.to_string());
        Ok(())
    }
}

/// A tensor either borrowed as it was or converted to another dtype.
enum Converted<'a> {
    Borrowed(&'a CudaTensor),
    Owned(CudaTensor),
}

impl std::ops::Deref for Converted<'_> {
    type Target = CudaTensor;
    fn deref(&self) -> &CudaTensor {
        match self {
            Converted::Borrowed(t) => t,
            Converted::Owned(t) => t,
        }
    }
}

fn cfg(grid: u32, block: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: smem,
    }
}

fn oom_or(op: &str, bytes: usize, what: &str, remedy: &dyn Fn() -> String, e: DriverError) -> Error {
    if e.0 == cu_sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        Error::Cuda(format!("{op}: out of device memory allocating {bytes} bytes ({what}); {}", remedy()))
    } else {
        Error::Cuda(format!("{op}: allocating {bytes} bytes ({what}) failed: {e}"))
    }
}

/// Keep freed memory in the stream-ordered pool instead of returning it to the driver at every
/// synchronisation (the forward pass allocates and frees its activations every layer). Best effort.
fn keep_pool_memory(ctx: &CudaContext) {
    if !ctx.has_async_alloc() {
        return;
    }
    // SAFETY: the pool belongs to this context's device; the attribute takes a pointer to a u64.
    unsafe {
        if let Ok(pool) = cudarc::driver::result::device::get_default_mem_pool(ctx.cu_device()) {
            let mut threshold: u64 = u64::MAX;
            let _ = cu_sys::cuMemPoolSetAttribute(
                pool,
                cu_sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut threshold as *mut u64 as *mut std::ffi::c_void,
            );
        }
    }
}

/// Element `i` of `CudaBackend::random(.., seed, offset, scale)` before its rounding to the tensor's dtype:
/// offset + scale * (2u - 1), u the top 24 bits of splitmix64(seed + i) over 2^24 (the CPU twin of
/// kernels/random_fill.cu, with the same single-rounding fma).
pub fn random_value(seed: u64, i: u64, offset: f32, scale: f32) -> f32 {
    let mut x = seed.wrapping_add(i).wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    let u = (x >> 40) as u32 as f32 * (1.0 / 16_777_216.0);
    scale.mul_add(2.0 * u - 1.0, offset)
}

/// Host f32 values encoded as `dt` little-endian bytes.
fn encode(values: &[f32], dt: DType) -> Vec<u8> {
    match dt {
        DType::F16 => values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
        DType::BF16 => values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
        _ => bytemuck::cast_slice(values).to_vec(),
    }
}

fn decode(bytes: &[u8], dt: DType) -> Vec<f32> {
    match dt {
        DType::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        DType::BF16 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        _ => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Layout = CudaLayout;
    type Index = CudaIndex;
    type Scores = CudaScores;

    fn describe(&self) -> String {
        let dt = match self.dtype {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            _ => "f32",
        };
        format!(
            "cuda:{} {} sm_{}{} ({dt})",
            self.ordinal, self.device_name, self.compute_capability.0, self.compute_capability.1
        )
    }

    /// The weights as `upload` stores them (2-D in the compute dtype, 1-D in f32) against the free memory.
    fn check_weights_fit(&self, c: &crate::config::ModelConfig) -> Result<()> {
        let one_d = c.num_1d_params();
        let need = (c.num_params() - one_d) * self.dtype.size() + one_d * 4;
        let (free, total) = self.memory_info()?;
        if need > free {
            return Err(Error::Cuda(format!(
                "the model's weights need {:.2} GB of device memory in {}, and {:.2} GB of the device's {:.2} GB are free: \
                 they do not fit (a smaller --max-batch-tokens cannot help; {}use a device with more memory)",
                need as f64 / 1e9,
                self.dtype.name(),
                free as f64 / 1e9,
                total as f64 / 1e9,
                if self.dtype == DType::F32 { "--dtype f16 halves them, or " } else { "" }
            )));
        }
        Ok(())
    }

    /// 2-D weights in the compute dtype; 1-D parameters (LayerNorm, biases) in f32, as [1, n].
    fn upload(&self, t: &HostTensor) -> Result<CudaTensor> {
        let (rows, cols, dt) = match t.shape.as_slice() {
            [n] => (1, *n, DType::F32),
            [r, c] => (*r, *c, self.dtype),
            other => return Err(Error::tensor(&t.name, format!("has shape {other:?}, expected 1-D or 2-D"))),
        };
        let expected = rows * cols * t.dtype.size();
        if t.bytes.len() != expected || !matches!(t.dtype, DType::F32 | DType::F16 | DType::BF16) {
            // to_f32 gives the precise error (wrong byte count or a non-float dtype).
            t.to_f32()?;
        }
        let bytes: std::borrow::Cow<[u8]> = if t.dtype == dt {
            std::borrow::Cow::Borrowed(&t.bytes)
        } else {
            encode(&t.to_f32()?, dt).into()
        };
        // Weights that do not fit are not helped by a smaller batch: the error says what is free instead.
        let remedy = || {
            let free = self
                .memory_info()
                .map_or("unknown".into(), |(f, t)| format!("{:.2} GB of {:.2} GB", f as f64 / 1e9, t as f64 / 1e9));
            format!("{free} free: the model's weights do not fit this device (a smaller --max-batch-tokens cannot help)")
        };
        let what = format!("[{rows}, {cols}] {}", dt.name());
        let buf = self.alloc_raw_or::<u8>(&format!("upload of `{}`", t.name), (rows * cols * dt.size()).max(1), &what, &remedy)?;
        let mut out = CudaTensor { rows, cols, dtype: dt, buf };
        if !bytes.is_empty() {
            self.counters.h2d();
            self.stream
                .memcpy_htod(bytes.as_ref(), &mut out.buf)
                .map_err(|e| Error::Cuda(format!("upload of `{}` ({} bytes): {e}", t.name, bytes.len())))?;
        }
        Ok(out)
    }

    /// Activations in the compute dtype.
    fn from_host(&self, rows: usize, cols: usize, values: &[f32]) -> Result<CudaTensor> {
        self.from_host_as(rows, cols, values, self.dtype)
    }

    fn to_host(&self, t: &CudaTensor) -> Result<Vec<f32>> {
        if t.numel() == 0 {
            return Ok(vec![]);
        }
        self.counters.d2h();
        let bytes = self
            .stream
            .clone_dtoh(&t.buf.slice(0..t.bytes()))
            .map_err(|e| Error::Cuda(format!("to_host ({} bytes): {e}", t.bytes())))?;
        self.synchronize()?;
        Ok(decode(&bytes, t.dtype))
    }

    fn prepare(&self, l: &BatchLayout, tables: &[&[u32]]) -> Result<(CudaLayout, Vec<CudaIndex>)> {
        let attn = layout::attention_tables(l)?;
        // The tensor-core kernel's tiles only where it runs.
        let tc = if self.tensor_cores_for(self.dtype) {
            layout::tc_tiles(l, &attn)
        } else {
            layout::TcTiles::default()
        };
        let mut all: Vec<&[u32]> = vec![&l.positions, &attn.tiles, &attn.seg_off, &attn.ranges, &tc.tiles, &tc.row_seg];
        all.extend_from_slice(tables);
        let mut uploaded = self.upload_tables("prepare", &all)?.into_iter();
        let mut next = || uploaded.next().expect("one index per table");
        let layout = CudaLayout {
            tokens: l.tokens(),
            past_len: l.past_len,
            num_tiles: attn.num_tiles(),
            positions: next(),
            tiles: next(),
            seg_off: next(),
            ranges: next(),
            num_tc_tiles: tc.num_tiles(),
            tc_tiles: next(),
            row_seg: next(),
        };
        Ok((layout, uploaded.collect()))
    }

    fn index(&self, values: &[u32]) -> Result<CudaIndex> {
        Ok(self.upload_tables("index", &[values])?.remove(0))
    }

    fn embedding(&self, table: &CudaTensor, ids: &CudaIndex) -> Result<CudaTensor> {
        Self::check_float("embedding", table)?;
        if let Some(&id) = ids.host.iter().find(|&&id| id as usize >= table.rows) {
            return Err(Error::invalid(format!(
                "token id {id} is outside the embedding table of {} rows",
                table.rows
            )));
        }
        let h = table.cols;
        let mut out = self.alloc("embedding", ids.len(), h, DType::F32)?;
        if ids.is_empty() || h == 0 {
            return Ok(out);
        }
        let name = format!("embedding_{}", suffix(table.dtype));
        let f = self.func("embedding", &name)?;
        let h_i = h as i32;
        let ids_d = ids.view();
        let mut b = self.stream.launch_builder(&f);
        b.arg(&table.buf).arg(&ids_d).arg(&mut out.buf).arg(&h_i);
        self.launch("embedding", &name, &mut b, cfg(ids.len() as u32, 256, 0))?;
        Ok(out)
    }

    fn layernorm(&self, x: &CudaTensor, w: &CudaTensor, b: &CudaTensor, eps: f32) -> Result<CudaTensor> {
        Self::check_float("layernorm", x)?;
        let c = x.cols;
        if w.numel() != c || b.numel() != c {
            return Err(Error::invalid(format!(
                "layernorm: {c} columns, weight has {} and bias {} values",
                w.numel(),
                b.numel()
            )));
        }
        let w = self.as_dtype("layernorm", w, DType::F32)?;
        let b = self.as_dtype("layernorm", b, DType::F32)?;
        let mut out = self.alloc("layernorm", x.rows, c, self.dtype)?;
        if x.rows == 0 || c == 0 {
            return Ok(out);
        }
        let name = format!("layernorm_{}_{}", suffix(x.dtype), suffix(self.dtype));
        let f = self.func("layernorm", &name)?;
        let c_i = c as i32;
        let mut l = self.stream.launch_builder(&f);
        l.arg(&x.buf).arg(&w.buf).arg(&b.buf).arg(&mut out.buf).arg(&c_i).arg(&eps);
        self.launch("layernorm", &name, &mut l, cfg(x.rows as u32, 256, 0))?;
        Ok(out)
    }

    fn parallel_norms(
        &self,
        x: &mut CudaTensor,
        ln1: (&CudaTensor, &CudaTensor),
        ln2: (&CudaTensor, &CudaTensor),
        eps: f32,
        out_biases: (&CudaTensor, &CudaTensor),
    ) -> Result<(CudaTensor, CudaTensor)> {
        let op = "parallel_norms";
        if x.dtype != DType::F32 {
            return Err(Error::invalid(format!("{op}: the residual stream must be f32, not {}", x.dtype.name())));
        }
        let c = x.cols;
        let params = [ln1.0, ln1.1, ln2.0, ln2.1, out_biases.0, out_biases.1];
        if let Some(p) = params.iter().find(|p| p.numel() != c) {
            return Err(Error::invalid(format!("{op}: {c} columns, a parameter has {} values", p.numel())));
        }
        let params: Vec<Converted> = params.iter().map(|p| self.as_dtype(op, p, DType::F32)).collect::<Result<_>>()?;
        let mut a = self.alloc(op, x.rows, c, self.dtype)?;
        let mut m = self.alloc(op, x.rows, c, self.dtype)?;
        if x.rows == 0 || c == 0 {
            return Ok((a, m));
        }
        let name = format!("parallel_norms_{}", suffix(self.dtype));
        let f = self.func(op, &name)?;
        let c_i = c as i32;
        let mut l = self.stream.launch_builder(&f);
        l.arg(&mut x.buf);
        for p in &params {
            l.arg(&p.buf);
        }
        l.arg(&mut a.buf).arg(&mut m.buf).arg(&c_i).arg(&eps);
        self.launch(op, &name, &mut l, cfg(x.rows as u32, 256, 0))?;
        Ok((a, m))
    }

    fn linear_accumulate(&self, y: &mut CudaTensor, x: &CudaTensor, w: &CudaTensor) -> Result<()> {
        let op = "linear_accumulate";
        Self::check_float(op, w)?;
        if y.dtype != DType::F32 || x.cols != w.cols || (y.rows, y.cols) != (x.rows, w.rows) {
            return Err(Error::invalid(format!(
                "{op}: [{}, {}] x [{}, {}]^T onto [{}, {}] {} (expected f32)",
                x.rows,
                x.cols,
                w.rows,
                w.cols,
                y.rows,
                y.cols,
                y.dtype.name()
            )));
        }
        let x = self.as_dtype(op, x, w.dtype)?;
        self.gemm(op, &x, w, y, 1.0)
    }

    fn linear(&self, x: &CudaTensor, w: &CudaTensor, b: Option<&CudaTensor>) -> Result<CudaTensor> {
        Self::check_float("linear", w)?;
        if x.cols != w.cols {
            return Err(Error::invalid(format!(
                "linear: input has {} features, weight [{}, {}] expects {}",
                x.cols, w.rows, w.cols, w.cols
            )));
        }
        let x = self.as_dtype("linear", x, w.dtype)?;
        let (m, n) = (x.rows, w.rows);
        let Some(b) = b else {
            let mut out = self.alloc("linear", m, n, w.dtype)?;
            self.gemm("linear", &x, w, &mut out, 0.0)?;
            return Ok(out);
        };
        if b.numel() != n {
            return Err(Error::invalid(format!("linear: bias has {} values for {n} outputs", b.numel())));
        }
        // The bias is added once, in f32: an f32 output is pre-filled with it and the GEMM accumulates onto
        // it (beta = 1, cuBLAS adds in f32 and writes f32), then one rounding to the compute dtype. (Filling a
        // half-precision output with the bias would round the bias, then the sum: twice.)
        let mut acc = self.alloc("linear", m, n, DType::F32)?;
        let nn = (m * n) as u64;
        if nn > 0 {
            let name = format!("broadcast_rows_{}_f32", suffix(b.dtype));
            let f = self.func("broadcast_rows", &name)?;
            let (grid, block) = layout::grid_1d(nn);
            let n_i = n as i32;
            let mut l = self.stream.launch_builder(&f);
            l.arg(&b.buf).arg(&mut acc.buf).arg(&nn).arg(&n_i);
            self.launch("linear", &name, &mut l, cfg(grid, block, 0))?;
        }
        self.gemm("linear", &x, w, &mut acc, 1.0)?;
        if w.dtype == DType::F32 {
            Ok(acc)
        } else {
            self.cast("linear", &acc, w.dtype)
        }
    }

    fn bias_gelu(&self, x: &mut CudaTensor, b: &CudaTensor) -> Result<()> {
        Self::check_float("bias_gelu", x)?;
        if b.numel() != x.cols {
            return Err(Error::invalid(format!("bias_gelu: bias has {} values for {} columns", b.numel(), x.cols)));
        }
        let n = x.numel() as u64;
        if n == 0 {
            return Ok(());
        }
        let name = format!("bias_gelu_{}_{}", suffix(x.dtype), suffix(b.dtype));
        let f = self.func("bias_gelu", &name)?;
        let (grid, block) = layout::grid_1d(n);
        let c_i = x.cols as i32;
        let mut l = self.stream.launch_builder(&f);
        l.arg(&mut x.buf).arg(&b.buf).arg(&n).arg(&c_i);
        self.launch("bias_gelu", &name, &mut l, cfg(grid, block, 0))?;
        Ok(())
    }

    fn qkv_rotary(&self, x: &CudaTensor, w: &CudaTensor, b: &CudaTensor, layout: &CudaLayout, s: AttnShape) -> Result<CudaTensor> {
        let op = "qkv_rotary";
        Self::check_float(op, w)?;
        if x.cols != w.cols || b.numel() != w.rows {
            return Err(Error::invalid(format!(
                "{op}: input [{}, {}], weight [{}, {}], bias of {} values",
                x.rows,
                x.cols,
                w.rows,
                w.cols,
                b.numel()
            )));
        }
        if s.rotary_ndims > s.head_dim || s.rotary_ndims % 2 != 0 {
            return Err(Error::invalid(format!(
                "{op}: {} rotary dims for a head dim of {} (expected an even number <= the head dim)",
                s.rotary_ndims, s.head_dim
            )));
        }
        check_qkv(op, (x.rows, w.rows), layout, s)?; // the output's shape, before allocating anything
        let x = self.as_dtype(op, x, w.dtype)?;
        let bias = self.as_dtype(op, b, DType::F32)?;
        // The GEMM's f32 accumulator, no bias (booked as "linear", as the other GEMMs): qkv_rotary.cu adds
        // the bias, rotates and rounds once.
        let mut acc = self.alloc(op, x.rows, w.rows, DType::F32)?; // [T, 3h] f32
        self.gemm("linear", &x, w, &mut acc, 0.0)?;
        let mut qkv = self.alloc(op, x.rows, w.rows, w.dtype)?;
        if x.rows == 0 || w.rows == 0 {
            return Ok(qkv);
        }
        let name = format!("qkv_rotary_{}", suffix(w.dtype));
        let f = self.func(op, &name)?;
        let (heads, hd, rot) = (s.heads as i32, s.head_dim as i32, s.rotary_ndims as i32);
        let positions = layout.positions.view();
        let mut l = self.stream.launch_builder(&f);
        l.arg(&acc.buf)
            .arg(&bias.buf)
            .arg(&positions)
            .arg(&mut qkv.buf)
            .arg(&heads)
            .arg(&hd)
            .arg(&rot)
            .arg(&s.rotary_base);
        self.launch(op, &name, &mut l, cfg(x.rows as u32, 256, 0))?;
        Ok(qkv)
    }

    fn attention(&self, qkv: &CudaTensor, past: Option<&CudaTensor>, layout: &CudaLayout, s: AttnShape) -> Result<CudaTensor> {
        Self::check_float("attention", qkv)?;
        check_qkv("attention", (qkv.rows, qkv.cols), layout, s)?;
        let p = layout.past_len;
        if past.map_or(0, |t| t.rows) != p {
            return Err(Error::invalid(format!(
                "attention: layout expects {p} cached rows, cache holds {}",
                past.map_or(0, |t| t.rows)
            )));
        }
        let past = match past {
            Some(t) if t.cols != qkv.cols => {
                return Err(Error::invalid(format!(
                    "attention: cache rows have {} columns, qkv rows {}",
                    t.cols, qkv.cols
                )))
            }
            Some(t) => Some(self.as_dtype("attention", t, qkv.dtype)?),
            None => None,
        };
        let h = s.heads * s.head_dim;
        let mut out = self.alloc("attention", qkv.rows, h, qkv.dtype)?;
        if layout.num_tiles == 0 || s.heads == 0 {
            return Ok(out);
        }
        if s.heads > 65535 {
            return Err(Error::invalid(format!("attention: {} heads exceed the grid limit 65535", s.heads)));
        }
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let past_buf = past.as_deref().map(|t| &t.buf).unwrap_or(&qkv.buf);
        let past_len = p as u32;
        let (seg_off, ranges) = (layout.seg_off.view(), layout.ranges.view());
        let tensor_cores = self.tensor_cores_for(qkv.dtype) && layout::ATTN_TC_HEAD_DIMS.contains(&s.head_dim);
        if tensor_cores && layout.num_tc_tiles == 0 {
            return Err(Error::invalid(format!(
                "attention: the batch layout was prepared without tensor-core tiles (tensor-core attention was off, or the backend's dtype is {}): prepare it again",
                self.dtype.name()
            )));
        }
        // (module, kernel, shared memory, query tiles): the tensor-core kernel's 64-row tiles, or the f32 kernel's.
        let (module, name, smem, tiles, num_tiles) = if tensor_cores {
            let name = format!("attention_tc_{}_hd{}", suffix(qkv.dtype), s.head_dim);
            (
                "attention_tc",
                name,
                layout::attention_tc_smem_bytes(s.head_dim),
                &layout.tc_tiles,
                layout.num_tc_tiles,
            )
        } else {
            let name = format!("attention_{}_d{}", suffix(qkv.dtype), layout::attention_dims_per_lane(s.head_dim)?);
            (
                "attention",
                name,
                layout::attention_smem_bytes(s.head_dim),
                &layout.tiles,
                layout.num_tiles,
            )
        };
        let f = self.func(module, &name)?;
        self.ensure_smem(&f, &name, smem)?;
        let (heads, hd) = (s.heads as i32, s.head_dim as i32);
        let (tiles, row_seg) = (tiles.view(), layout.row_seg.view());
        let mut l = self.stream.launch_builder(&f);
        l.arg(&qkv.buf).arg(past_buf).arg(&mut out.buf).arg(&tiles).arg(&seg_off).arg(&ranges);
        if tensor_cores {
            l.arg(&row_seg).arg(&past_len).arg(&heads); // head dim: a template parameter
        } else {
            l.arg(&past_len).arg(&heads).arg(&hd);
        }
        l.arg(&scale);
        let launch = LaunchConfig {
            grid_dim: (num_tiles as u32, s.heads as u32, 1),
            block_dim: (layout::ATTN_THREADS, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        self.launch("attention", &name, &mut l, launch)?;
        Ok(out)
    }

    fn residual_add(&self, x: &mut CudaTensor, a: &CudaTensor, b: Option<&CudaTensor>) -> Result<()> {
        Self::check_float("residual_add", x)?;
        Self::check_float("residual_add", a)?;
        for t in std::iter::once(a).chain(b) {
            if (t.rows, t.cols) != (x.rows, x.cols) {
                return Err(Error::invalid(format!(
                    "residual_add: shapes [{}, {}] and [{}, {}] differ",
                    x.rows, x.cols, t.rows, t.cols
                )));
            }
        }
        let b = match b {
            Some(b) => Some(self.as_dtype("residual_add", b, a.dtype)?),
            None => None,
        };
        let n = x.numel() as u64;
        if n == 0 {
            return Ok(());
        }
        let name = format!("residual_add_{}_{}", suffix(x.dtype), suffix(a.dtype));
        let f = self.func("residual_add", &name)?;
        let (grid, block) = layout::grid_1d(n);
        let null: u64 = 0;
        let mut l = self.stream.launch_builder(&f);
        l.arg(&mut x.buf).arg(&a.buf);
        match &b {
            Some(b) => l.arg(&b.buf),
            None => l.arg(&null),
        };
        l.arg(&n);
        self.launch("residual_add", &name, &mut l, cfg(grid, block, 0))?;
        Ok(())
    }

    fn gather_rows(&self, x: &CudaTensor, rows: &CudaIndex) -> Result<CudaTensor> {
        if let Some(&r) = rows.host.iter().find(|&&r| r as usize >= x.rows) {
            return Err(Error::invalid(format!("gather_rows: row {r} of a {}-row tensor", x.rows)));
        }
        let mut out = self.alloc("gather_rows", rows.len(), x.cols, x.dtype)?;
        let row_bytes = x.cols * x.dtype.size();
        if rows.is_empty() || row_bytes == 0 {
            return Ok(out);
        }
        let rows_d = rows.view();
        let (name, words) = if row_bytes % 4 == 0 {
            ("gather_rows_u32", row_bytes / 4)
        } else {
            ("gather_rows_u16", row_bytes / 2)
        };
        let f = self.func("gather_rows", name)?;
        let w = words as i32;
        let mut l = self.stream.launch_builder(&f);
        l.arg(&x.buf).arg(&rows_d).arg(&mut out.buf).arg(&w);
        self.launch("gather_rows", name, &mut l, cfg(rows.len() as u32, 256, 0))?;
        Ok(out)
    }

    fn concat_rows(&self, a: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor> {
        if a.cols != b.cols {
            return Err(Error::invalid(format!("concat_rows: {} and {} columns", a.cols, b.cols)));
        }
        let b = self.as_dtype("concat_rows", b, a.dtype)?;
        let mut out = self.alloc("concat_rows", a.rows + b.rows, a.cols, a.dtype)?;
        let (na, nb) = (a.bytes(), b.bytes());
        let copy = |e: DriverError| Error::Cuda(format!("concat_rows: device copy failed: {e}"));
        if na > 0 {
            self.stream
                .memcpy_dtod(&a.buf.slice(0..na), &mut out.buf.slice_mut(0..na))
                .map_err(copy)?;
        }
        if nb > 0 {
            self.stream
                .memcpy_dtod(&b.buf.slice(0..nb), &mut out.buf.slice_mut(na..na + nb))
                .map_err(copy)?;
        }
        Ok(out)
    }

    fn lm_head(&self, x: &CudaTensor, w: &CudaTensor) -> Result<CudaTensor> {
        Self::check_float("lm_head", w)?;
        if x.cols != w.cols {
            return Err(Error::invalid(format!(
                "lm_head: input has {} features, weight [{}, {}] expects {}",
                x.cols, w.rows, w.cols, w.cols
            )));
        }
        let x = self.as_dtype("lm_head", x, w.dtype)?;
        let mut logits = self.alloc("lm_head", x.rows, w.rows, DType::F32)?;
        self.gemm("lm_head", &x, w, &mut logits, 0.0)?;
        Ok(logits)
    }

    fn new_scores(&self, n: usize) -> Result<CudaScores> {
        Ok(CudaScores {
            n,
            buf: self.alloc_raw::<u32>("logsoftmax_gather", 2 * n, "target scores")?,
        })
    }

    fn logsoftmax_gather(&self, logits: &CudaTensor, targets: &CudaIndex, scores: &mut CudaScores, at: usize) -> Result<()> {
        let op = "logsoftmax_gather";
        let (r, v) = (logits.rows, logits.cols);
        let n = check_targets(&targets.host, scores.n, at)?;
        if let Some(p) = targets.host.chunks_exact(2).find(|p| p[0] as usize >= r || p[1] as usize >= v) {
            return Err(Error::invalid(format!(
                "logsoftmax_gather: target ({}, {}) outside logits [{r}, {v}]",
                p[0], p[1]
            )));
        }
        if n == 0 {
            return Ok(());
        }
        let logits = self.as_dtype(op, logits, DType::F32)?;
        let mut m = self.alloc_raw::<f32>(op, r, "row maxima")?;
        let mut log_s = self.alloc_raw::<f32>(op, r, "row log-sums")?;
        let mut arg = self.alloc_raw::<u32>(op, r, "row argmax")?;
        let v_i = v as i32;
        let f = self.func("logsoftmax_gather", "logsoftmax_stats")?;
        let mut l = self.stream.launch_builder(&f);
        l.arg(&logits.buf).arg(&v_i).arg(&mut m).arg(&mut log_s).arg(&mut arg);
        self.launch(op, "logsoftmax_stats", &mut l, cfg(r as u32, 1024, 0))?;

        // Log-probabilities into scores[at..at + n], greedy flags into scores[N + at..N + at + n].
        let total = scores.n;
        let (mut lp, mut greedy) = scores.buf.split_at_mut(total);
        let mut lp = lp.slice_mut(at..at + n);
        let mut greedy = greedy.slice_mut(at..at + n);
        let targets_d = targets.view();
        let n_i = n as i32;
        let f = self.func("logsoftmax_gather", "logsoftmax_targets")?;
        let mut l = self.stream.launch_builder(&f);
        l.arg(&logits.buf)
            .arg(&v_i)
            .arg(&m)
            .arg(&log_s)
            .arg(&arg)
            .arg(&targets_d)
            .arg(&n_i)
            .arg(&mut lp)
            .arg(&mut greedy);
        self.launch(op, "logsoftmax_targets", &mut l, cfg(n.div_ceil(256) as u32, 256, 0))
    }

    fn read_scores(&self, scores: &CudaScores) -> Result<Vec<TokenScore>> {
        let n = scores.n;
        if n == 0 {
            return Ok(vec![]);
        }
        self.counters.d2h();
        let both = self
            .stream
            .clone_dtoh(&scores.buf.slice(0..2 * n))
            .map_err(|e| Error::Cuda(format!("logsoftmax_gather: reading back {n} scores: {e}")))?;
        self.synchronize()?;
        Ok(both[..n]
            .iter()
            .zip(&both[n..])
            .map(|(&bits, &g)| TokenScore {
                logprob: f32::from_bits(bits),
                is_greedy: g != 0,
            })
            .collect())
    }

    fn activity(&self) -> Activity {
        self.counters.snapshot()
    }

    fn time_ops(&self, on: bool) {
        self.counters.set_timing(on);
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // cudarc's CudaBlas::drop unwraps cublasDestroy, which fails once the context holds a sticky device
        // error (after a kernel fault): then destroy the handle here, ignoring that error, and forget the
        // wrapper (its reference to the stream leaks, once, after a fault). Teardown never panics.
        if self.stream.synchronize().is_ok() {
            // SAFETY: dropped once, here; never used again.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.blas) };
        } else {
            // SAFETY: a live handle, destroyed once; the wrapper is never dropped.
            let _ = unsafe { blas_result::destroy_handle(*self.blas.handle()) };
        }
    }
}

/// A qkv matrix of [rows, cols] (the one `op` reads, or the one it is about to make) fits the batch layout and
/// the attention shape.
fn check_qkv(op: &str, (rows, cols): (usize, usize), layout: &CudaLayout, s: AttnShape) -> Result<()> {
    if cols != 3 * s.heads * s.head_dim {
        return Err(Error::invalid(format!(
            "{op}: qkv has {cols} columns, expected 3 x {} heads x {}",
            s.heads, s.head_dim
        )));
    }
    if rows != layout.tokens {
        return Err(Error::invalid(format!("{op}: qkv has {rows} rows, the batch layout {}", layout.tokens)));
    }
    Ok(())
}
