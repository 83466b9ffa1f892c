module example.com/bookshop/inventory

go 1.19

require github.com/julienschmidt/httprouter v1.3.0
