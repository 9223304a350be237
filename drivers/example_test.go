package drivers_test

import (
	"fmt"
	"log"

	"github.com/threepc/threepc/drivers"
	"github.com/threepc/threepc/resource"
)

// Resources from configuration: NAME=URL specifications, the driver
// chosen by the URL's scheme. Nothing is contacted until a resource is
// used (Check, at start-up).
func ExampleOpen() {
	var resources []resource.Resource
	for _, spec := range []string{
		"orders=postgres://app@127.0.0.1:5432/orders?sslmode=disable",
		"billing=mariadb://app:secret@127.0.0.1:3306/billing",
	} {
		name, url, err := drivers.ParseSpec(spec)
		if err != nil {
			log.Fatal(err)
		}
		r, err := drivers.Open(name, url)
		if err != nil {
			log.Fatal(err)
		}
		defer resource.Close(r)
		resources = append(resources, r)
	}
	for _, r := range resources {
		fmt.Println(r.Name(), r.System())
	}
	_, err := drivers.Open("cache", "redis://127.0.0.1:6379/0")
	fmt.Println(err)
	// Output:
	// orders postgresql
	// billing mysql
	// threepc/drivers: unknown URL scheme (want postgres://, postgresql://, mysql:// or mariadb://): "redis"
}
