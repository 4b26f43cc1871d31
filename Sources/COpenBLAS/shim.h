#include <cblas.h>

/* LAPACK (Fortran ABI), provided by OpenBLAS: singular values for `train factorize`. */
void dgesvd_(const char *jobu, const char *jobvt, const int *m, const int *n, double *a, const int *lda,
             double *s, double *u, const int *ldu, double *vt, const int *ldvt, double *work,
             const int *lwork, int *info);

/* LAPACK for extract/resize/combine (OpConvertPipeline/Adapt/LAPACK+SVD.swift): divide-and-conquer
   SVD and the thin QR factorization (Householder reflectors, then the explicit Q). */
void dgesdd_(const char *jobz, const int *m, const int *n, double *a, const int *lda, double *s, double *u,
             const int *ldu, double *vt, const int *ldvt, double *work, const int *lwork, int *iwork, int *info);
void dgeqrf_(const int *m, const int *n, double *a, const int *lda, double *tau, double *work, const int *lwork,
             int *info);
void dorgqr_(const int *m, const int *n, const int *k, double *a, const int *lda, const double *tau, double *work,
             const int *lwork, int *info);
