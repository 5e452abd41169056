module local/incluster

go 1.22
