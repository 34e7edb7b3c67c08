module example.com/microservices

go 1.22
