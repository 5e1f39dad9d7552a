-- Reserved for the HTTP send API's keys (the number keeps the migrations gap-free).
SELECT 1;
