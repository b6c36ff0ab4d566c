package grpcapi

import (
	"context"
	"net/http"
	"strconv"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/shoal-mesh/shoal/api"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of Shoal's errors; the
// reason is the catalogue's stable code (docs/api.md).
const ErrorDomain = "shoal"

// TrailerErrorCode carries the stable code for clients that read
// metadata rather than status details.
const TrailerErrorCode = "shoal-error-code"

// codeByStatus is the gRPC status of each HTTP status the catalogue
// gives, so a code means the same on both edges.
var codeByStatus = map[int]codes.Code{
	http.StatusBadRequest:            codes.InvalidArgument,
	http.StatusUnauthorized:          codes.Unauthenticated,
	http.StatusNotFound:              codes.NotFound,
	http.StatusConflict:              codes.FailedPrecondition,
	http.StatusRequestEntityTooLarge: codes.ResourceExhausted,
	http.StatusInternalServerError:   codes.Internal,
	http.StatusServiceUnavailable:    codes.Unavailable,
	http.StatusGatewayTimeout:        codes.DeadlineExceeded,
	http.StatusInsufficientStorage:   codes.ResourceExhausted,
}

// codeByCode overrides the status mapping where gRPC has a closer code.
var codeByCode = map[string]codes.Code{
	api.CodeVersionDuplicate: codes.AlreadyExists,
	api.CodeCollectionExists: codes.AlreadyExists,
	api.CodeBusy:             codes.ResourceExhausted,
}

// statusOf is err as a gRPC status: the catalogue's code as ErrorInfo
// reason (with the staleness figures and Retry-After as its metadata)
// and as the shoal-error-code trailer, under the matching gRPC code.
func statusOf(ctx context.Context, err error) error {
	body, info := describe(err)
	c, ok := codeByCode[body.Code]
	if !ok {
		if c, ok = codeByStatus[info.Status]; !ok {
			c = codes.Unknown
		}
	}
	ei := &errdetails.ErrorInfo{Reason: body.Code, Domain: ErrorDomain, Metadata: map[string]string{}}
	if body.StalenessSeconds > 0 || body.MaxStalenessSeconds > 0 {
		ei.Metadata["staleness_seconds"] = strconv.FormatFloat(body.StalenessSeconds, 'f', 3, 64)
		ei.Metadata["max_staleness_seconds"] = strconv.FormatFloat(body.MaxStalenessSeconds, 'f', 3, 64)
	}
	if info.RetryAfter > 0 {
		ei.Metadata["retry_after_seconds"] = strconv.Itoa(int(info.RetryAfter.Seconds() + 0.999))
	}
	grpc.SetTrailer(ctx, metadata.Pairs(TrailerErrorCode, body.Code))
	st := status.New(c, body.Message)
	if withInfo, err := st.WithDetails(ei); err == nil {
		st = withInfo
	}
	return st.Err()
}
