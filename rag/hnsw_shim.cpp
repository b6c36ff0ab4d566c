#include "hnsw_shim.h"

#include <hnswlib/hnswlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <queue>
#include <utility>
#include <vector>
#include <stdexcept>
#include <string>

// Int8Space compares vectors stored as a float scale and int8 components
// (each component of the unit vector divided by the scale and rounded,
// the scale being the largest magnitude over 127, so every vector uses
// the whole int8 range): 1 - the dot product of the dequantised vectors,
// at a little over a quarter of the float vector's memory.
class Int8Space : public hnswlib::SpaceInterface<float> {
	size_t dim_;

	static float distance(const void *a, const void *b, const void *param) {
		float sa, sb;
		memcpy(&sa, a, sizeof sa);
		memcpy(&sb, b, sizeof sb);
		const int8_t *x = (const int8_t *)a + sizeof(float), *y = (const int8_t *)b + sizeof(float);
		size_t n = *(const size_t *)param;
		int32_t s = 0;
		for (size_t i = 0; i < n; i++) s += (int32_t)x[i] * (int32_t)y[i];
		return 1.0f - (float)s * sa * sb;
	}

public:
	explicit Int8Space(size_t dim) : dim_(dim) {}
	size_t get_data_size() override { return sizeof(float) + dim_; }
	hnswlib::DISTFUNC<float> get_dist_func() override { return distance; }
	void *get_dist_func_param() override { return &dim_; }
};

struct shoal_hnsw {
	std::unique_ptr<hnswlib::SpaceInterface<float>> space;
	std::unique_ptr<hnswlib::HierarchicalNSW<float>> index;
	int metric = 0;
	size_t dim = 0;

	// in returns v as the graph stores it: the floats themselves, or in
	// buf its scale and int8 components (Int8Space).
	const void *in(const float *v, std::vector<int8_t> &buf) const {
		if (metric != 2) return v;
		buf.resize(sizeof(float) + dim);
		float m = 0;
		for (size_t i = 0; i < dim; i++) m = std::max(m, std::fabs(v[i]));
		float scale = m / 127.0f;
		memcpy(buf.data(), &scale, sizeof scale);
		for (size_t i = 0; i < dim; i++) {
			float q = m > 0 ? std::nearbyint(v[i] / scale) : 0.0f;
			buf[sizeof(float) + i] = (int8_t)std::max(-127.0f, std::min(127.0f, q));
		}
		return buf.data();
	}
};

static void set_err(char **err, const char *msg) {
	if (err) *err = strdup(msg);
}

static hnswlib::SpaceInterface<float> *new_space(int dim, int metric) {
	if (metric == 1) return new hnswlib::L2Space(dim);
	if (metric == 2) return new Int8Space(dim);
	return new hnswlib::InnerProductSpace(dim);
}

template <typename F>
static int guard(char **err, F f) {
	try {
		return f();
	} catch (const std::exception &e) {
		set_err(err, e.what());
	} catch (...) {
		set_err(err, "unknown hnswlib error");
	}
	return -1;
}

extern "C" shoal_hnsw *shoal_hnsw_new(int dim, int metric, size_t capacity, size_t m, size_t ef_construction, size_t seed, char **err) {
	shoal_hnsw *h = new shoal_hnsw();
	h->metric = metric;
	h->dim = dim;
	int rc = guard(err, [&] {
		h->space.reset(new_space(dim, metric));
		h->index.reset(new hnswlib::HierarchicalNSW<float>(h->space.get(), capacity, m, ef_construction, seed));
		return 0;
	});
	if (rc != 0) {
		delete h;
		return nullptr;
	}
	return h;
}

extern "C" shoal_hnsw *shoal_hnsw_load(const char *path, int dim, int metric, size_t capacity, char **err) {
	shoal_hnsw *h = new shoal_hnsw();
	h->metric = metric;
	h->dim = dim;
	int rc = guard(err, [&] {
		h->space.reset(new_space(dim, metric));
		h->index.reset(new hnswlib::HierarchicalNSW<float>(h->space.get(), std::string(path), false, capacity));
		return 0;
	});
	if (rc != 0) {
		delete h;
		return nullptr;
	}
	return h;
}

extern "C" int shoal_hnsw_save(shoal_hnsw *h, const char *path, char **err) {
	return guard(err, [&] {
		h->index->saveIndex(std::string(path));
		return 0;
	});
}

extern "C" int shoal_hnsw_add(shoal_hnsw *h, const float *v, size_t label, char **err) {
	return guard(err, [&] {
		hnswlib::HierarchicalNSW<float> &x = *h->index;
		if (x.cur_element_count >= x.max_elements_) x.resizeIndex(x.max_elements_ * 2 + 1024);
		std::vector<int8_t> buf;
		x.addPoint(h->in(v, buf), label);
		return 0;
	});
}

extern "C" int shoal_hnsw_reserve(shoal_hnsw *h, size_t n, char **err) {
	return guard(err, [&] {
		if (n > h->index->max_elements_) h->index->resizeIndex(n);
		return 0;
	});
}

extern "C" void shoal_hnsw_set_ef(shoal_hnsw *h, size_t ef) { h->index->setEf(ef); }

extern "C" int shoal_hnsw_delete(shoal_hnsw *h, size_t label, char **err) {
	return guard(err, [&] {
		h->index->markDelete(label);
		return 0;
	});
}

extern "C" int shoal_hnsw_search(shoal_hnsw *h, const float *q, size_t k, size_t *labels, float *dists, char **err) {
	return guard(err, [&] {
		std::vector<int8_t> buf;
		auto res = h->index->searchKnn(h->in(q, buf), k);
		int n = (int)res.size();
		for (int i = n - 1; i >= 0; i--) {  // the queue pops worst first
			labels[i] = res.top().second;
			dists[i] = res.top().first;
			res.pop();
		}
		return n;
	});
}

extern "C" int shoal_hnsw_exact(shoal_hnsw *h, const float *q, const size_t *labels, size_t n, size_t k, size_t *out_labels, float *out_dists, char **err) {
	return guard(err, [&] {
		hnswlib::HierarchicalNSW<float> &x = *h->index;
		std::vector<int8_t> buf;
		const void *qv = h->in(q, buf);
		// A max-heap of (distance, label): the worst kept hit on top.
		std::priority_queue<std::pair<float, size_t>> top;
		auto consider = [&](hnswlib::tableint id) {
			std::pair<float, size_t> hit(x.fstdistfunc_(qv, x.getDataByInternalId(id), x.dist_func_param_), x.getExternalLabel(id));
			if (top.size() < k) {
				top.push(hit);
			} else if (hit < top.top()) {
				top.pop();
				top.push(hit);
			}
		};
		if (labels != nullptr) {
			for (size_t i = 0; i < n; i++) {
				auto it = x.label_lookup_.find(labels[i]);
				if (it != x.label_lookup_.end() && !x.isMarkedDeleted(it->second)) consider(it->second);
			}
		} else {
			for (hnswlib::tableint id = 0; id < x.cur_element_count; id++) {
				if (!x.isMarkedDeleted(id)) consider(id);
			}
		}
		int m = (int)top.size();
		for (int i = m - 1; i >= 0; i--) {
			out_labels[i] = top.top().second;
			out_dists[i] = top.top().first;
			top.pop();
		}
		return m;
	});
}

extern "C" int shoal_hnsw_vector(shoal_hnsw *h, size_t label, float *out, char **err) {
	return guard(err, [&] {
		hnswlib::HierarchicalNSW<float> &x = *h->index;
		auto it = x.label_lookup_.find(label);
		if (it == x.label_lookup_.end()) throw std::runtime_error("no such label");
		const char *data = x.getDataByInternalId(it->second);
		if (h->metric == 2) {
			float scale;
			memcpy(&scale, data, sizeof scale);
			const int8_t *q = (const int8_t *)data + sizeof(float);
			for (size_t i = 0; i < h->dim; i++) out[i] = (float)q[i] * scale;
		} else {
			memcpy(out, data, x.data_size_);
		}
		return 0;
	});
}

extern "C" size_t shoal_hnsw_count(shoal_hnsw *h) { return h->index->cur_element_count; }

extern "C" void shoal_hnsw_free(shoal_hnsw *h) { delete h; }
