# The C API of csrc/fusenn.h, declared once for the Cython bindings
# (cimported by _kernels.pyx and its include _plan.pxi). Keep it in the order
# of fusenn.h; the comments there document every function.

from libc.stdint cimport int64_t, uint64_t

cdef extern from "fusenn.h" nogil:
    ctypedef enum fusenn_activation:
        FUSENN_ACT_IDENTITY
        FUSENN_ACT_SIGMOID
        FUSENN_ACT_TANH
        FUSENN_ACT_RELU
        FUSENN_ACT_LEAKY_RELU
        FUSENN_ACT_SOFTMAX
        FUSENN_ACT_GELU
        FUSENN_ACT_GELU_TANH
        FUSENN_ACT_ELU
        FUSENN_ACT_SOFTPLUS
        FUSENN_ACT_SWISH
    int FUSENN_OK
    int FUSENN_ENOMEM
    int FUSENN_EINVAL
    int FUSENN_EDIVERGED
    int FUSENN_EBADINPUT
    int FUSENN_EINTERRUPTED
    int fusenn_interrupt_begin()
    void fusenn_interrupt_end()
    int fusenn_interrupt_pending()
    void fusenn_interrupt_clear()
    int fusenn_activation_needs_z(fusenn_activation act)
    int fusenn_has_openmp()
    int fusenn_num_procs()
    int fusenn_omp_max_threads()
    int fusenn_num_threads()
    void fusenn_set_global_threads(int n)
    int fusenn_swap_thread_override(int n)
    void fusenn_mark_forked_child()
    void fusenn_configure_default_threads(int cap, int without_openmp)
    int64_t fusenn_clock_ns()
    int fusenn_team_size(int nt)
    void fusenn_region_waited(int64_t start, int64_t caller_done)
    const char *fusenn_gemm_isa()
    int fusenn_gemm_is_serial(size_t m, size_t n, size_t k)

    int fusenn_gemm_f32(size_t m, size_t n, size_t k, float alpha,
                        const float *A, Py_ssize_t rs_a, Py_ssize_t cs_a,
                        const float *B, Py_ssize_t rs_b, Py_ssize_t cs_b, float beta,
                        float *C, Py_ssize_t rs_c, Py_ssize_t cs_c, int nthreads)
    int fusenn_gemm_f64(size_t m, size_t n, size_t k, double alpha,
                        const double *A, Py_ssize_t rs_a, Py_ssize_t cs_a,
                        const double *B, Py_ssize_t rs_b, Py_ssize_t cs_b, double beta,
                        double *C, Py_ssize_t rs_c, Py_ssize_t cs_c, int nthreads)

    int fusenn_dense_forward_f32(size_t n, size_t d_in, size_t d_out,
                                 const float *X, Py_ssize_t rs_x, Py_ssize_t cs_x,
                                 const float *W, Py_ssize_t rs_w, Py_ssize_t cs_w,
                                 const float *b, fusenn_activation act,
                                 float *Y, Py_ssize_t ldy, int nthreads)
    int fusenn_dense_forward_f64(size_t n, size_t d_in, size_t d_out,
                                 const double *X, Py_ssize_t rs_x, Py_ssize_t cs_x,
                                 const double *W, Py_ssize_t rs_w, Py_ssize_t cs_w,
                                 const double *b, fusenn_activation act,
                                 double *Y, Py_ssize_t ldy, int nthreads)
    int fusenn_dense_backward_f32(size_t n, size_t d_in, size_t d_out,
                                  const float *X, Py_ssize_t rs_x, Py_ssize_t cs_x,
                                  const float *W, Py_ssize_t rs_w, Py_ssize_t cs_w,
                                  const float *Y, Py_ssize_t ldy,
                                  const float *dY, Py_ssize_t lddy, fusenn_activation act,
                                  float *dZ, float *dW, float *db, float *dX, int nthreads)
    int fusenn_dense_backward_f64(size_t n, size_t d_in, size_t d_out,
                                  const double *X, Py_ssize_t rs_x, Py_ssize_t cs_x,
                                  const double *W, Py_ssize_t rs_w, Py_ssize_t cs_w,
                                  const double *Y, Py_ssize_t ldy,
                                  const double *dY, Py_ssize_t lddy, fusenn_activation act,
                                  double *dZ, double *dW, double *db, double *dX, int nthreads)

    void fusenn_activation_forward_f32(fusenn_activation act, size_t n, size_t d,
                                       const float *Z, Py_ssize_t ldz,
                                       float *A, Py_ssize_t lda, int nthreads)
    void fusenn_activation_forward_f64(fusenn_activation act, size_t n, size_t d,
                                       const double *Z, Py_ssize_t ldz,
                                       double *A, Py_ssize_t lda, int nthreads)
    void fusenn_activation_backward_f32(fusenn_activation act, size_t n, size_t d,
                                        const float *Z, Py_ssize_t ldz,
                                        const float *A, Py_ssize_t lda,
                                        const float *dA, Py_ssize_t ldda,
                                        float *dZ, Py_ssize_t lddz, int nthreads)
    void fusenn_activation_backward_f64(fusenn_activation act, size_t n, size_t d,
                                        const double *Z, Py_ssize_t ldz,
                                        const double *A, Py_ssize_t lda,
                                        const double *dA, Py_ssize_t ldda,
                                        double *dZ, Py_ssize_t lddz, int nthreads)

    double fusenn_softmax_cross_entropy_f32(size_t n, size_t k, const float *Z, Py_ssize_t ldz,
                                            const int64_t *labels, const float *sw,
                                            float *P, Py_ssize_t ldp,
                                            float *dZ, Py_ssize_t lddz, int nthreads)
    double fusenn_softmax_cross_entropy_f64(size_t n, size_t k, const double *Z, Py_ssize_t ldz,
                                            const int64_t *labels, const double *sw,
                                            double *P, Py_ssize_t ldp,
                                            double *dZ, Py_ssize_t lddz, int nthreads)
    double fusenn_sigmoid_binary_cross_entropy_f32(size_t n, size_t k, const float *Z, Py_ssize_t ldz,
                                                   const float *T, Py_ssize_t ldt, const float *sw,
                                                   float *P, Py_ssize_t ldp,
                                                   float *dZ, Py_ssize_t lddz, int nthreads)
    double fusenn_sigmoid_binary_cross_entropy_f64(size_t n, size_t k, const double *Z, Py_ssize_t ldz,
                                                   const double *T, Py_ssize_t ldt, const double *sw,
                                                   double *P, Py_ssize_t ldp,
                                                   double *dZ, Py_ssize_t lddz, int nthreads)
    double fusenn_mse_f32(size_t n, size_t k, const float *A, Py_ssize_t lda,
                          const float *T, Py_ssize_t ldt, const float *sw,
                          float *dA, Py_ssize_t ldda, int nthreads)
    double fusenn_mse_f64(size_t n, size_t k, const double *A, Py_ssize_t lda,
                          const double *T, Py_ssize_t ldt, const double *sw,
                          double *dA, Py_ssize_t ldda, int nthreads)
    double fusenn_mae_f32(size_t n, size_t k, const float *A, Py_ssize_t lda,
                          const float *T, Py_ssize_t ldt, const float *sw,
                          float *dA, Py_ssize_t ldda, int nthreads)
    double fusenn_mae_f64(size_t n, size_t k, const double *A, Py_ssize_t lda,
                          const double *T, Py_ssize_t ldt, const double *sw,
                          double *dA, Py_ssize_t ldda, int nthreads)
    double fusenn_huber_f32(size_t n, size_t k, const float *A, Py_ssize_t lda,
                            const float *T, Py_ssize_t ldt, double delta, const float *sw,
                            float *dA, Py_ssize_t ldda, int nthreads)
    double fusenn_huber_f64(size_t n, size_t k, const double *A, Py_ssize_t lda,
                            const double *T, Py_ssize_t ldt, double delta, const double *sw,
                            double *dA, Py_ssize_t ldda, int nthreads)
    double fusenn_poisson_f32(size_t n, size_t k, const float *A, Py_ssize_t lda,
                              const float *T, Py_ssize_t ldt, const float *sw,
                              float *dA, Py_ssize_t ldda, int nthreads)
    double fusenn_poisson_f64(size_t n, size_t k, const double *A, Py_ssize_t lda,
                              const double *T, Py_ssize_t ldt, const double *sw,
                              double *dA, Py_ssize_t ldda, int nthreads)

    size_t fusenn_sgd_update_f32(size_t len, float *w, const float *g, float *v,
                                 double lr, double momentum, int nesterov, float *prev,
                                 int nthreads)
    size_t fusenn_sgd_update_f64(size_t len, double *w, const double *g, double *v,
                                 double lr, double momentum, int nesterov, double *prev,
                                 int nthreads)
    size_t fusenn_adam_update_f32(size_t len, float *w, const float *g, float *m, float *v,
                                  double lr, double beta1, double beta2, double eps,
                                  double weight_decay, int64_t t, float *prev, int nthreads)
    size_t fusenn_adam_update_f64(size_t len, double *w, const double *g, double *m, double *v,
                                  double lr, double beta1, double beta2, double eps,
                                  double weight_decay, int64_t t, double *prev, int nthreads)
    size_t fusenn_rmsprop_update_f32(size_t len, float *w, const float *g, float *v, double lr,
                                     double rho, double eps, float *prev, int nthreads)
    size_t fusenn_rmsprop_update_f64(size_t len, double *w, const double *g, double *v,
                                     double lr, double rho, double eps, double *prev,
                                     int nthreads)
    size_t fusenn_adagrad_update_f32(size_t len, float *w, const float *g, float *v, double lr,
                                     double eps, float *prev, int nthreads)
    size_t fusenn_adagrad_update_f64(size_t len, double *w, const double *g, double *v,
                                     double lr, double eps, double *prev, int nthreads)
    double fusenn_sum_squares_f32(size_t len, const float *x, int nthreads)
    double fusenn_sum_squares_f64(size_t len, const double *x, int nthreads)
    void fusenn_grad_transform_f32(size_t len, float *g, const float *w, double l2,
                                   double scale, double clipvalue, int nthreads)
    void fusenn_grad_transform_f64(size_t len, double *g, const double *w, double l2,
                                   double scale, double clipvalue, int nthreads)

    void fusenn_dropout_forward_f32(size_t n, size_t d, const float *X, Py_ssize_t ldx,
                                    double rate, uint64_t seed, float *Y, Py_ssize_t ldy,
                                    int nthreads)
    void fusenn_dropout_forward_f64(size_t n, size_t d, const double *X, Py_ssize_t ldx,
                                    double rate, uint64_t seed, double *Y, Py_ssize_t ldy,
                                    int nthreads)
    void fusenn_dropout_backward_f32(size_t n, size_t d, const float *dY, Py_ssize_t lddy,
                                     double rate, uint64_t seed, float *dX, Py_ssize_t lddx,
                                     int nthreads)
    void fusenn_dropout_backward_f64(size_t n, size_t d, const double *dY, Py_ssize_t lddy,
                                     double rate, uint64_t seed, double *dX, Py_ssize_t lddx,
                                     int nthreads)
    uint64_t fusenn_dropout_seed(uint64_t base, uint64_t step)

    void fusenn_batchnorm_forward_train_f32(size_t n, size_t d, const float *X, Py_ssize_t ldx,
                                            const float *gamma, const float *beta,
                                            double eps, double momentum,
                                            float *running_mean, float *running_var,
                                            float *mean, float *invstd,
                                            float *Y, Py_ssize_t ldy, int nthreads)
    void fusenn_batchnorm_forward_train_f64(size_t n, size_t d, const double *X, Py_ssize_t ldx,
                                            const double *gamma, const double *beta,
                                            double eps, double momentum,
                                            double *running_mean, double *running_var,
                                            double *mean, double *invstd,
                                            double *Y, Py_ssize_t ldy, int nthreads)
    void fusenn_batchnorm_forward_infer_f32(size_t n, size_t d, const float *X, Py_ssize_t ldx,
                                            const float *gamma, const float *beta, double eps,
                                            const float *running_mean,
                                            const float *running_var,
                                            float *Y, Py_ssize_t ldy, int nthreads)
    void fusenn_batchnorm_forward_infer_f64(size_t n, size_t d, const double *X, Py_ssize_t ldx,
                                            const double *gamma, const double *beta, double eps,
                                            const double *running_mean,
                                            const double *running_var,
                                            double *Y, Py_ssize_t ldy, int nthreads)
    void fusenn_batchnorm_backward_f32(size_t n, size_t d, const float *X, Py_ssize_t ldx,
                                       const float *dY, Py_ssize_t lddy, const float *gamma,
                                       const float *mean, const float *invstd,
                                       float *dX, Py_ssize_t lddx, float *dgamma,
                                       float *dbeta, int nthreads)
    void fusenn_batchnorm_backward_f64(size_t n, size_t d, const double *X, Py_ssize_t ldx,
                                       const double *dY, Py_ssize_t lddy, const double *gamma,
                                       const double *mean, const double *invstd,
                                       double *dX, Py_ssize_t lddx, double *dgamma,
                                       double *dbeta, int nthreads)

    # utilities (memory.c, shuffle.c, labels.c, validate.c)
    size_t fusenn_allocation_count()
    size_t fusenn_first_label_out_of_range(size_t n, const int64_t *labels, int64_t k)
    void fusenn_shuffle(uint64_t seed, size_t n, int64_t *order)
    size_t fusenn_count_nonfinite_f32(size_t n, size_t d, const float *X, Py_ssize_t ldx, int nthreads)
    size_t fusenn_count_nonfinite_f64(size_t n, size_t d, const double *X, Py_ssize_t ldx, int nthreads)

    # the training engine (plan.c, csrc/layers/)
    ctypedef enum fusenn_loss:
        FUSENN_LOSS_CROSS_ENTROPY
        FUSENN_LOSS_BINARY_CROSS_ENTROPY
        FUSENN_LOSS_MSE
        FUSENN_LOSS_MAE
        FUSENN_LOSS_HUBER
        FUSENN_LOSS_POISSON
    ctypedef enum fusenn_optimizer_kind:
        FUSENN_OPT_SGD
        FUSENN_OPT_ADAM
        FUSENN_OPT_RMSPROP
        FUSENN_OPT_ADAGRAD
    ctypedef struct fusenn_optimizer:
        fusenn_optimizer_kind kind
        double lr, momentum
        int nesterov
        double beta1, beta2, eps
        double rho, weight_decay, l2
        double clipnorm, global_clipnorm, clipvalue
        int64_t steps

    enum: FUSENN_MAX_RANK
    enum: FUSENN_MAX_ATTRS
    enum: FUSENN_MAX_PARAMS
    ctypedef struct fusenn_shape:
        size_t rank
        size_t dim[FUSENN_MAX_RANK]
    int fusenn_kind_find(const char *name)
    int fusenn_kind_count()
    const char *fusenn_kind_name(int kind)
    const char *fusenn_kind_attr(int kind, size_t i)
    int fusenn_kind_reads_indices(int kind)
    ctypedef struct fusenn_layer:
        int kind
        double attr[FUSENN_MAX_ATTRS]
        size_t param_offset[FUSENN_MAX_PARAMS]
        uint64_t seed
        uint64_t *counter
        void *buffer[2]
    ctypedef enum fusenn_pool_mode:
        FUSENN_POOL_MAX
        FUSENN_POOL_AVG
    int fusenn_layer_describe(const fusenn_layer *desc, const fusenn_shape *input,
                              fusenn_shape *out, size_t *n_params, fusenn_shape *param_shapes)
    size_t fusenn_layer_saved_bytes_f32(const fusenn_layer *desc, const fusenn_shape *input,
                                        size_t n)
    size_t fusenn_layer_saved_bytes_f64(const fusenn_layer *desc, const fusenn_shape *input,
                                        size_t n)
    size_t fusenn_layer_work_bytes_f32(const fusenn_layer *desc, const fusenn_shape *input,
                                       size_t n)
    size_t fusenn_layer_work_bytes_f64(const fusenn_layer *desc, const fusenn_shape *input,
                                       size_t n)
    int fusenn_layer_forward_f32(const fusenn_layer *desc, const fusenn_shape *input, size_t n,
                                 const void *x, Py_ssize_t ldx, float **params, float *y,
                                 void *saved, void *work, const unsigned char *mask,
                                 int training, int logits, int nthreads, const void **result,
                                 const unsigned char **mask_out)
    int fusenn_layer_forward_f64(const fusenn_layer *desc, const fusenn_shape *input, size_t n,
                                 const void *x, Py_ssize_t ldx, double **params, double *y,
                                 void *saved, void *work, const unsigned char *mask,
                                 int training, int logits, int nthreads, const void **result,
                                 const unsigned char **mask_out)
    int fusenn_layer_backward_f32(const fusenn_layer *desc, const fusenn_shape *input, size_t n,
                                  const void *x, Py_ssize_t ldx, const float *y,
                                  float **params, float **grads, const void *saved,
                                  void *work, const unsigned char *mask, float *dy, float *dx,
                                  int logits, int nthreads, void **result)
    int fusenn_layer_backward_f64(const fusenn_layer *desc, const fusenn_shape *input, size_t n,
                                  const void *x, Py_ssize_t ldx, const double *y,
                                  double **params, double **grads, const void *saved,
                                  void *work, const unsigned char *mask, double *dy, double *dx,
                                  int logits, int nthreads, void **result)
    ctypedef struct fusenn_network:
        size_t n_layers
        const fusenn_layer *layers
        fusenn_shape input
        fusenn_loss loss
        double loss_param
        void *params
        void *grads
        void *state[2]
        size_t arena_len
    ctypedef struct fusenn_plan_f32:
        pass
    ctypedef struct fusenn_plan_f64:
        pass
    int fusenn_plan_create_f32(const fusenn_network *net, fusenn_plan_f32 **plan, size_t *bad_layer)
    int fusenn_plan_create_f64(const fusenn_network *net, fusenn_plan_f64 **plan, size_t *bad_layer)
    void fusenn_plan_destroy_f32(fusenn_plan_f32 *plan)
    void fusenn_plan_destroy_f64(fusenn_plan_f64 *plan)
    fusenn_shape fusenn_plan_output_shape_f32(const fusenn_plan_f32 *plan)
    fusenn_shape fusenn_plan_output_shape_f64(const fusenn_plan_f64 *plan)
    int fusenn_plan_train_batch_f32(fusenn_plan_f32 *plan, size_t n, const void *X, Py_ssize_t ldx,
                                    const int64_t *labels, const float *T, Py_ssize_t ldt,
                                    const float *sw, size_t chunks, fusenn_optimizer *opt,
                                    double *loss, double *correct, int nthreads)
    int fusenn_plan_train_batch_f64(fusenn_plan_f64 *plan, size_t n, const void *X, Py_ssize_t ldx,
                                    const int64_t *labels, const double *T, Py_ssize_t ldt,
                                    const double *sw, size_t chunks, fusenn_optimizer *opt,
                                    double *loss, double *correct, int nthreads)
    int fusenn_plan_train_epoch_f32(fusenn_plan_f32 *plan, size_t n, const void *X, Py_ssize_t ldx,
                                    const int64_t *labels, const float *T, Py_ssize_t ldt,
                                    const float *sw, const int64_t *order, size_t batch_size,
                                    size_t chunks, size_t first_batch, size_t n_batches,
                                    fusenn_optimizer *opt,
                                    double *loss, double *loss_sum, double *correct_sum,
                                    size_t *done, int interruptible, int nthreads)
    int fusenn_plan_train_epoch_f64(fusenn_plan_f64 *plan, size_t n, const void *X, Py_ssize_t ldx,
                                    const int64_t *labels, const double *T, Py_ssize_t ldt,
                                    const double *sw, const int64_t *order, size_t batch_size,
                                    size_t chunks, size_t first_batch, size_t n_batches,
                                    fusenn_optimizer *opt,
                                    double *loss, double *loss_sum, double *correct_sum,
                                    size_t *done, int interruptible, int nthreads)
    size_t fusenn_plan_record_len_f32(const fusenn_plan_f32 *plan)
    size_t fusenn_plan_record_len_f64(const fusenn_plan_f64 *plan)
    int fusenn_plan_chunk_gradients_f32(fusenn_plan_f32 *plan, const void *X, Py_ssize_t ldx,
                                        const int64_t *labels, const float *T, Py_ssize_t ldt,
                                        const float *sw, const int64_t *batch, size_t n,
                                        size_t chunks, size_t c0, size_t c1, float **grads,
                                        double *records, int nthreads)
    int fusenn_plan_chunk_gradients_f64(fusenn_plan_f64 *plan, const void *X, Py_ssize_t ldx,
                                        const int64_t *labels, const double *T, Py_ssize_t ldt,
                                        const double *sw, const int64_t *batch, size_t n,
                                        size_t chunks, size_t c0, size_t c1, double **grads,
                                        double *records, int nthreads)
    int fusenn_plan_apply_step_f32(fusenn_plan_f32 *plan, size_t n, size_t chunks,
                                   const double *records, fusenn_optimizer *opt, double *loss,
                                   double *correct, int nthreads)
    int fusenn_plan_apply_step_f64(fusenn_plan_f64 *plan, size_t n, size_t chunks,
                                   const double *records, fusenn_optimizer *opt, double *loss,
                                   double *correct, int nthreads)
    int fusenn_plan_predict_f32(fusenn_plan_f32 *plan, size_t n, const void *X, Py_ssize_t ldx,
                                float *out, Py_ssize_t ldo, int interruptible, int nthreads)
    int fusenn_plan_predict_f64(fusenn_plan_f64 *plan, size_t n, const void *X, Py_ssize_t ldx,
                                double *out, Py_ssize_t ldo, int interruptible, int nthreads)
    int fusenn_plan_evaluate_f32(fusenn_plan_f32 *plan, size_t n, const void *X, Py_ssize_t ldx,
                                 const int64_t *labels, const float *T, Py_ssize_t ldt,
                                 const float *sw, double *loss_sum, double *correct_sum,
                                 int interruptible, int nthreads)
    int fusenn_plan_evaluate_f64(fusenn_plan_f64 *plan, size_t n, const void *X, Py_ssize_t ldx,
                                 const int64_t *labels, const double *T, Py_ssize_t ldt,
                                 const double *sw, double *loss_sum, double *correct_sum,
                                 int interruptible, int nthreads)
