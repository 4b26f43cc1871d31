#include <cblas.h>

/* LAPACK (Fortran ABI), provided by OpenBLAS: singular values for `train factorize`. */
void dgesvd_(const char *jobu, const char *jobvt, const int *m, const int *n, double *a, const int *lda,
             double *s, double *u, const int *ldu, double *vt, const int *ldvt, double *work,
             const int *lwork, int *info);
