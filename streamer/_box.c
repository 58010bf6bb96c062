/* Area downscale of an 8-bit plane by whole factors: each output pixel is the mean of its fx x fy
 * block of input pixels, rounded half up: the area average, taking each sample as centred in
 * its block (as OpenCV's INTER_AREA does). swscale's area filter gives the same within one level
 * where the chroma siting is unspecified; it places chroma where the frame says (H.264: left),
 * a third of a chroma sample away at 3:1. It costs a fifth of swscale's CPU or less: swscale
 * filters each of the 1,080 input rows of a 1080p picture horizontally with gathered loads,
 * where this sums the fy rows of a block with plain vector adds first and then reduces the
 * summed row, for 1/fy of the rows (docs/benchmarks.md, "The tap's downscale in C").
 *
 * streamer._box.box_down(src, dst): src and dst are 2-D uint8 buffers (NumPy arrays) whose rows
 * may be strided (forwards) but whose pixels are contiguous; dst's shape gives the factors,
 * which must divide src's exactly, with fx * fy <= MAX_BLOCK. Anything else raises ValueError
 * (or the buffer protocol's TypeError / BufferError) and writes nothing. The GIL is released
 * while it runs. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BLOCK 255 /* fx * fy: sums fit 16 bits, and the reciprocal below is exact */

/* x86-64 with GCC on glibc (ifunc): one build that uses AVX2 where the CPU has it, the clone
 * picked at load time; elsewhere (Clang, musl, other CPUs) the compiler's baseline vectors. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__ELF__) && \
    defined(__GLIBC__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

/* Each output pixel of one row from the summed input row `acc`: (sum + n/2) / n, as a multiply
 * and a shift (m = ceil(2^24 / n)): exact, and within 32 bits, for every n <= MAX_BLOCK and
 * every sum up to 255 * n (tests/test_tap.py tries each sum at every rounding step). `fx` is a
 * constant where the caller names one, so the compiler unrolls the inner loop. */
static inline __attribute__((always_inline)) void
reduce_row(const uint16_t *acc, uint8_t *out, Py_ssize_t ow, int fx, uint32_t half, uint32_t m)
{
    for (Py_ssize_t x = 0; x < ow; x++) {
        uint32_t s = half;
        for (int k = 0; k < fx; k++)
            s += acc[x * fx + k];
        out[x] = (uint8_t)((s * m) >> 24);
    }
}

CLONES static void
box_rows(const uint8_t *src, Py_ssize_t ss, Py_ssize_t w, uint8_t *dst, Py_ssize_t ds,
         Py_ssize_t ow, Py_ssize_t oh, int fx, int fy, uint16_t *acc)
{
    uint32_t n = (uint32_t)(fx * fy), half = n / 2, m = ((1u << 24) + n - 1) / n;
    for (Py_ssize_t oy = 0; oy < oh; oy++) {
        const uint8_t *row = src + oy * fy * ss;
        for (Py_ssize_t x = 0; x < w; x++)
            acc[x] = row[x];
        for (int k = 1; k < fy; k++) {
            const uint8_t *next = row + k * ss;
            for (Py_ssize_t x = 0; x < w; x++)
                acc[x] += next[x];
        }
        uint8_t *out = dst + oy * ds;
        switch (fx) {
        case 1: reduce_row(acc, out, ow, 1, half, m); break;
        case 2: reduce_row(acc, out, ow, 2, half, m); break;
        case 3: reduce_row(acc, out, ow, 3, half, m); break;
        case 4: reduce_row(acc, out, ow, 4, half, m); break;
        case 6: reduce_row(acc, out, ow, 6, half, m); break; /* 4K to 640 */
        default: reduce_row(acc, out, ow, fx, half, m); break;
        }
    }
}

/* A 2-D byte buffer with contiguous pixels, or an exception. */
static int
plane(PyObject *obj, Py_buffer *view, int writable, const char *name)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    if (view->ndim != 2 || view->itemsize != 1 || (view->format && strcmp(view->format, "B") != 0) ||
        view->strides[1] != 1 || view->shape[0] < 1 || view->shape[1] < 1 ||
        view->strides[0] < view->shape[1]) {
        PyErr_Format(PyExc_ValueError, "%s must be a 2-D uint8 array with contiguous rows of pixels", name);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *
box_down(PyObject *self, PyObject *args)
{
    PyObject *src_obj, *dst_obj;
    Py_buffer src, dst;
    if (!PyArg_ParseTuple(args, "OO:box_down", &src_obj, &dst_obj))
        return NULL;
    if (plane(src_obj, &src, 0, "src") < 0)
        return NULL;
    if (plane(dst_obj, &dst, 1, "dst") < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    Py_ssize_t h = src.shape[0], w = src.shape[1], oh = dst.shape[0], ow = dst.shape[1];
    PyObject *result = NULL;
    if (w % ow || h % oh) {
        PyErr_Format(PyExc_ValueError, "dst %zdx%zd does not divide src %zdx%zd", ow, oh, w, h);
    } else if (w / ow > MAX_BLOCK || h / oh > MAX_BLOCK || (w / ow) * (h / oh) > MAX_BLOCK) {
        PyErr_Format(PyExc_ValueError, "blocks of %zdx%zd pixels are more than %d", w / ow, h / oh, MAX_BLOCK);
    } else {
        uint16_t *acc = PyMem_RawMalloc((size_t)w * sizeof(uint16_t));
        if (acc == NULL) {
            PyErr_NoMemory();
        } else {
            Py_BEGIN_ALLOW_THREADS
            box_rows(src.buf, src.strides[0], w, dst.buf, dst.strides[0], ow, oh, (int)(w / ow), (int)(h / oh), acc);
            Py_END_ALLOW_THREADS
            PyMem_RawFree(acc);
            result = Py_NewRef(Py_None);
        }
    }
    PyBuffer_Release(&dst);
    PyBuffer_Release(&src);
    return result;
}

static PyMethodDef methods[] = {
    {"box_down", box_down, METH_VARARGS,
     "box_down(src, dst): dst = the mean of each block of src, rounded (see the module)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "streamer._box", NULL, 0, methods};

PyMODINIT_FUNC
PyInit__box(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "MAX_BLOCK", MAX_BLOCK) < 0)
        Py_CLEAR(m);
    return m;
}
