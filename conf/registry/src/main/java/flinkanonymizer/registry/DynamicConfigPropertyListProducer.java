package flinkanonymizer.registry;

import io.apicurio.common.apps.config.DynamicConfigPropertyList;

import javax.enterprise.context.ApplicationScoped;
import javax.enterprise.inject.Produces;

/**
 * Stands in for the bean that io.apicurio:apicurio-common-app-components-config-index-deployment
 * (not served by Maven Central) generates at build time: the list of properties that may be
 * changed at run time through the admin API. Empty: every property keeps its static value.
 */
public class DynamicConfigPropertyListProducer {
    @Produces
    @ApplicationScoped
    DynamicConfigPropertyList dynamicConfigPropertyList() {
        return new DynamicConfigPropertyList(java.util.List.of());
    }
}
