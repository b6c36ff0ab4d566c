// A C face for hnswlib's C++ HierarchicalNSW, for cgo. Every call catches
// C++ exceptions and returns them as a malloc'd message in *err.
#ifndef SHOAL_HNSW_SHIM_H
#define SHOAL_HNSW_SHIM_H
#include <stddef.h>
#ifdef __cplusplus
extern "C" {
#endif
typedef struct shoal_hnsw shoal_hnsw;
// metric: 0 inner product (1 - dot), 1 squared L2, 2 inner product of
// int8 vectors (a float scale, the largest magnitude over 127, and each
// component over it, rounded: the shim quantises every vector it is given
// and dequantises what it returns).
shoal_hnsw *shoal_hnsw_new(int dim, int metric, size_t capacity, size_t m, size_t ef_construction, size_t seed, char **err);
// load reads a graph saveIndex wrote, with room for capacity nodes.
shoal_hnsw *shoal_hnsw_load(const char *path, int dim, int metric, size_t capacity, char **err);
int shoal_hnsw_save(shoal_hnsw *h, const char *path, char **err);
int shoal_hnsw_add(shoal_hnsw *h, const float *v, size_t label, char **err);
int shoal_hnsw_reserve(shoal_hnsw *h, size_t n, char **err);
int shoal_hnsw_delete(shoal_hnsw *h, size_t label, char **err);
void shoal_hnsw_set_ef(shoal_hnsw *h, size_t ef);
// search writes up to k labels and distances, best first; it returns how many, or -1.
int shoal_hnsw_search(shoal_hnsw *h, const float *q, size_t k, size_t *labels, float *dists, char **err);
// exact writes the k nearest live (not deleted) nodes to q, best first,
// among labels (every live node when labels is NULL); it returns how many,
// or -1.
int shoal_hnsw_exact(shoal_hnsw *h, const float *q, const size_t *labels, size_t n, size_t k, size_t *out_labels, float *out_dists, char **err);
// vector copies label's vector (as stored: normalised for cosine) into out;
// 0, or -1 if the graph has no such label.
int shoal_hnsw_vector(shoal_hnsw *h, size_t label, float *out, char **err);
size_t shoal_hnsw_count(shoal_hnsw *h);
void shoal_hnsw_free(shoal_hnsw *h);
#ifdef __cplusplus
}
#endif
#endif
