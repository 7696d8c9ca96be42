/* rejection_log.h - refused reports and gradient sums, answered, counted
 * for their run and logged at info, at most NSD_REJECTION_LOG_LINES lines
 * per second per run (registry.h), so a trainer sending NaN is visible at
 * the default log level without flooding it:
 *
 *   level=info event=report_rejected run=r1 route=batches worker=3 layer=layer1.0.bn1
 *     reason=bad_value status=422 withheld=0 message="layers.layer1.0.bn1.mean[7]: ..."
 *
 * 'withheld' counts the lines of that run left out since its previous line.
 * Threads: any MHD thread. */
#ifndef NSD_REJECTION_LOG_H
#define NSD_REJECTION_LOG_H

#include "http/http.h"

/* The worker is unknown (the body did not decode): read it from the body
 * when the line is logged. */
#define NSD_WORKER_UNKNOWN (-1L)

/*! nsd_reject_report() :
 *  Answer 'req' (POST /batches, /sync or /grad) with the error 'code' and
 *  its detail, after counting the rejection in the run and logging it. */
void nsd_reject_report(nsd_request_t *req, int code, const ns_error_detail_t *err, long worker);

#endif /* NSD_REJECTION_LOG_H */
